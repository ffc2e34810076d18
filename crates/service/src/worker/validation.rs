//! The worker's validation of a batch's input: the problems a user sees in `errors`, and the
//! model that picks the engines.

use super::*;

impl Worker {
    /// The checks of a batch's input: the extra endpoints the service allows, several models
    /// when the batch allows them (each must have engines), and errors listed in full up to
    /// 1,000 (all are counted).
    pub(super) fn validate_options(&self, batch: &BatchRow) -> ValidateOptions {
        let mixed_models = (batch.mixed_models != 0).then(|| batch_format::ModelRoutes {
            engines: self.settings.model_engines.clone(),
            default: !self.settings.default_engines.is_empty(),
        });
        ValidateOptions {
            rules: batch_format::RulesConfig {
                extra_urls: self.settings.extra_endpoints.clone(),
                mixed_models,
            },
            max_listed_errors: 1000,
            ..ValidateOptions::default()
        }
    }

    /// The `validating` phase: the whole file against every rule, the batch's endpoint, and an
    /// engine for its model. Returns the model and the validation (for the pipeline), or how
    /// the batch ended.
    pub(super) async fn validate(
        &self,
        batch: &BatchRow,
        input: &Path,
    ) -> Result<Result<(String, Validation), WorkerEnd>, WorkerError> {
        let (path, options) = (input.to_owned(), self.validate_options(batch));
        let validation = tokio::task::spawn_blocking(move || validate_file(&path, &options))
            .await
            .map_err(|e| io("validation")(std::io::Error::other(e)))?;
        let mut validation = match validation {
            Ok(v) => v,
            Err(e) => {
                let error = batch_error("invalid_file", e.to_string(), None, None);
                return Ok(Err(self.fail_with(vec![error]).await?));
            }
        };
        let report = &validation.report;
        let mut errors: Vec<BatchError> = report
            .errors
            .iter()
            .map(|e| {
                batch_error(
                    e.code,
                    e.message.clone(),
                    e.param.map(str::to_owned),
                    e.line,
                )
            })
            .collect();
        if report.errors_not_listed > 0 {
            errors.push(batch_error(
                "too_many_errors",
                format!("and {} more problems not listed", report.errors_not_listed),
                None,
                None,
            ));
        }
        if report.requests == 0 && errors.is_empty() {
            errors.push(batch_error(
                "empty_file",
                "The input file has no request lines".into(),
                None,
                None,
            ));
        }
        if let Some(endpoint) = &report.endpoint
            && endpoint != &batch.endpoint
        {
            errors.push(batch_error(
                "url_mismatch",
                format!(
                    "The requests use the url {endpoint:?} but the batch was created for the \
                     endpoint {:?}; create the batch with endpoint {endpoint:?}",
                    batch.endpoint
                ),
                Some("url".into()),
                None,
            ));
        }
        let model = report.model.clone().unwrap_or_default();
        // Several models: each line's model was checked (model_not_served).
        if errors.is_empty()
            && batch.mixed_models == 0
            && self.settings.engines_for(&model).is_none()
        {
            errors.push(no_engine(&model));
        }
        let mut counted = None;
        if errors.is_empty() && batch.preflight != 0 {
            validation.preflight = self.preflight(batch, &model, &validation).await;
            counted = validation.preflight.as_ref().map(|p| {
                let tokens = p.report.input_tokens + p.report.worst_case_output_tokens;
                let json = serde_json::to_string(&p.report).unwrap_or_default();
                (json, i64::try_from(tokens).unwrap_or(i64::MAX))
            });
        }
        let tokens = counted.as_ref().map_or(batch.estimated_tokens, |c| c.1);
        if errors.is_empty()
            && let Some(limit) = self.settings.owner_max_enqueued_tokens
        {
            let others = self.store.enqueued_tokens(&batch.owner, &batch.id).await?;
            if others + tokens > i64::try_from(limit).unwrap_or(i64::MAX) {
                let what = match counted {
                    Some(_) => {
                        "tokens (prompts counted by the engine plus the most they may \
                                generate)"
                    }
                    None => "prompt tokens (estimated from the file's size)",
                };
                errors.push(batch_error(
                    "token_limit_exceeded",
                    format!(
                        "Enqueued token limit reached: this batch holds about {tokens} {what} \
                         and your other batches in progress {others}, over the limit of \
                         {limit}. Wait for some to finish before creating more."
                    ),
                    None,
                    None,
                ));
            }
        }
        if !errors.is_empty() {
            return Ok(Err(self.fail_with(errors).await?));
        }
        let report = &validation.report;
        match self
            .store
            .start(
                &self.batch,
                self.fence,
                report.requests as i64,
                Some(&model),
                counted
                    .as_ref()
                    .map(|(json, tokens)| (json.as_str(), *tokens)),
            )
            .await?
        {
            Ok(()) => Ok(Ok((model, validation))),
            Err(LeaseLost) => Ok(Err(WorkerEnd::GaveUp)),
        }
    }
}

impl Worker {
    /// The pre-flight count of a batch that asked for one, with its model's engines; none
    /// (the job goes on without it, its quota on the estimate) when it cannot be made.
    async fn preflight(
        &self,
        batch: &BatchRow,
        model: &str,
        validation: &Validation,
    ) -> Option<Preflight> {
        let urls = self.settings.engines_for(model)?;
        let engines = self.settings.engine_options(urls);
        match preflight_input(&engines, validation, &self.validate_options(batch)).await {
            Ok(counted) => {
                tracing::info!("{}", counted.report.describe());
                Some(counted)
            }
            Err(e) => {
                tracing::warn!("no pre-flight count: {e}");
                None
            }
        }
    }
}

pub(super) fn batch_error(
    code: &str,
    message: String,
    param: Option<String>,
    line: Option<u64>,
) -> BatchError {
    BatchError {
        code: code.into(),
        message,
        param,
        line,
    }
}

pub(super) fn no_engine(model: &str) -> BatchError {
    batch_error(
        "model_not_found",
        format!(
            "No engine serves the model {model:?}: start the service with --model-engine \
             '{model}=URL' or a default --engine-url"
        ),
        Some("model".into()),
        None,
    )
}
