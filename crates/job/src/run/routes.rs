//! Which engines each line goes to.
//!
//! A job with one model has one route: every engine given. With several models in one file
//! (`--mixed-models`) each model of the file has a route of its own: the engines of its
//! `--model-engine` entry (a LoRA adapter `base:adapter` takes its base's), or else the default
//! engines. Each route has its own connections, adaptive limits, breakers and a bound on its
//! requests in flight (`--concurrency` applies per model), so a slow or failing model's
//! engine holds back only its own lines.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::dispatch::{EngineOptions, Engines, Target};
use crate::input::line_models::LineModels;
use crate::run::stop::StopSignal;

/// The engines of one model (or of the whole job).
pub struct Route {
    pub engines: Engines,
    pub target: Target,
    /// The most requests in flight on this route.
    pub limit: usize,
    /// The route's own bound when the job has several (the dispatcher bounds a single one).
    slots: Option<Arc<Semaphore>>,
    /// The launched engine is this route's first engine.
    pub launched: bool,
}

/// Every route of the job, and which line takes which.
pub struct Routes {
    routes: Vec<Route>,
    /// With several models: each line's model, which is its route's index.
    line_models: Option<Arc<LineModels>>,
}

/// Where one route's engines come from.
pub struct RoutePlan {
    pub engines: EngineOptions,
    pub launched: bool,
}

impl Route {
    pub fn new(plan: &RoutePlan, path: &str) -> Result<Self, crate::dispatch::EngineError> {
        let engines = Engines::new(&plan.engines)?;
        let target = engines.target(path)?;
        Ok(Self {
            limit: plan.engines.concurrency.total(plan.engines.urls.len()),
            engines,
            target,
            slots: None,
            launched: plan.launched,
        })
    }
}

/// The engines of each of `models` (the file's, in index order): its `--model-engine` entry
/// (see [`batch_format::ModelRoutes::engines_of`]), or `default`.
pub fn plans(
    models: &[String],
    routes: &batch_format::ModelRoutes,
    default: &EngineOptions,
    launched: bool,
) -> Vec<RoutePlan> {
    models
        .iter()
        .map(|model| match routes.engines_of(model) {
            Some(urls) => RoutePlan {
                engines: EngineOptions {
                    urls: urls.to_vec(),
                    ..default.clone()
                },
                launched: false,
            },
            None => RoutePlan {
                engines: default.clone(),
                launched,
            },
        })
        .collect()
}

impl Routes {
    /// The one route of a job with one model.
    pub fn single(route: Route) -> Self {
        Self {
            routes: vec![route],
            line_models: None,
        }
    }

    /// A route per model, in the file's model order; each bounds its own requests in flight.
    pub fn per_model(routes: Vec<Route>, line_models: Arc<LineModels>) -> Self {
        let routes = routes
            .into_iter()
            .map(|mut r| {
                r.slots = Some(Arc::new(Semaphore::new(r.limit.max(1))));
                r
            })
            .collect();
        Self {
            routes,
            line_models: Some(line_models),
        }
    }

    pub fn all(&self) -> &[Route] {
        &self.routes
    }

    /// The route of `line` (a valid request: its model is known).
    pub fn of_line(&self, line: u64) -> &Route {
        let index = self
            .line_models
            .as_ref()
            .and_then(|m| m.of(line))
            .map_or(0, usize::from);
        &self.routes[index.min(self.routes.len() - 1)]
    }

    /// The dispatcher's bound on requests taken from the input and not yet answered. With one
    /// route, its limit. With several, twice the sum of their limits: each route holds its own
    /// requests in flight to its limit, and the rest wait for room on their route, so a model
    /// whose engine is slow or saturated does not stop the others at once; only once its
    /// waiting requests fill that margin does the input wait for it (memory stays bounded).
    pub fn dispatch_bound(&self) -> usize {
        let sum: usize = self.routes.iter().map(|r| r.limit).sum();
        if self.line_models.is_some() {
            sum.saturating_mul(2)
        } else {
            sum
        }
    }

    /// The sum of the adaptive limits (`None` with fixed limits).
    pub fn concurrency_limit(&self) -> Option<usize> {
        self.routes
            .iter()
            .map(|r| r.engines.concurrency_limit())
            .sum()
    }

    pub fn at_engines(&self) -> usize {
        self.routes.iter().map(|r| r.engines.at_engines()).sum()
    }

    /// Engines whose breaker is open, over every route.
    pub fn down(&self) -> usize {
        self.routes.iter().map(|r| r.engines.down()).sum()
    }

    /// How long every engine of every route has been failing, when all are.
    pub fn all_down_for(&self) -> Option<Duration> {
        self.routes
            .iter()
            .map(|r| r.engines.all_down_for())
            .min()
            .flatten()
    }

    /// Reads the engines' queues for the adaptive limits, on every route.
    pub async fn watch_queues(&self, stop: StopSignal) {
        let watchers = self
            .routes
            .iter()
            .map(|r| r.engines.watch_queues(stop.clone()));
        futures_util::future::join_all(watchers).await;
    }

    /// Stops sending to the launched engine (it is restarting).
    pub fn suspend_launched(&self, engine: usize) {
        for r in self.routes.iter().filter(|r| r.launched) {
            r.engines.suspend(engine);
        }
    }

    pub fn resume_launched(&self, engine: usize) {
        for r in self.routes.iter().filter(|r| r.launched) {
            r.engines.resume(engine);
        }
    }
}

impl Route {
    /// Waits for room on this route (none to wait for with a single route: the dispatcher's
    /// bound is the route's); `None` once the job is stopping.
    pub async fn room(&self, stop: &StopSignal) -> Option<Option<OwnedSemaphorePermit>> {
        let Some(slots) = &self.slots else {
            return Some(None);
        };
        tokio::select! {
            biased;
            () = stop.stopping() => None,
            permit = slots.clone().acquire_owned() => permit.ok().map(Some),
        }
    }
}
