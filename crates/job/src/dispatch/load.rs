//! The engines' own view of their load, for the adaptive limits: the waiting queue each engine
//! reports on `/metrics` (SGLang `sglang:num_queue_reqs`, vLLM `vllm:num_requests_waiting`),
//! read every [`POLL_EVERY`]. Online traffic's queued requests count too: batch work backs off
//! when the engine is busy for whatever reason.

use std::time::Duration;

use bytes::Bytes;
use hyper::Method;

use super::Engines;
use super::adaptive::Signal;
use crate::run::stop::StopSignal;

pub const POLL_EVERY: Duration = Duration::from_millis(500);
const POLL_TIMEOUT: Duration = Duration::from_secs(2);
/// The gauges of a waiting queue, by engine.
const QUEUE_GAUGES: [&str; 2] = ["sglang:num_queue_reqs", "vllm:num_requests_waiting"];

impl Engines {
    /// Reads every adaptive engine's queue until the job stops. Engines without such metrics
    /// are simply not read (the other signals still apply).
    pub async fn watch_queues(&self, stop: StopSignal) {
        if self.pool.limit(0).is_none() {
            return;
        }
        let Ok(metrics) = self.target("/metrics") else {
            return;
        };
        // Engines whose metrics have no queue (404, or no known gauge) are not asked again.
        let mut readable = vec![true; self.transports.len()];
        let mut tick = tokio::time::interval(POLL_EVERY);
        while readable.contains(&true) {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.stopping() => return,
            }
            for (engine, (transport, url)) in self.transports.iter().zip(&metrics.urls).enumerate()
            {
                if !readable[engine] {
                    continue;
                }
                let Ok(answer) = transport
                    .send(Method::GET, url, Bytes::new(), POLL_TIMEOUT)
                    .await
                else {
                    continue; // down for now: the breaker deals with that
                };
                let waiting = match answer.status {
                    200 => queue_of(&String::from_utf8_lossy(&answer.body)),
                    404 => None,
                    _ => continue,
                };
                match waiting {
                    Some(waiting) => self.pool.observe(
                        engine,
                        Signal::Queue {
                            waiting,
                            in_flight: self.pool.in_flight(engine),
                        },
                    ),
                    None => {
                        readable[engine] = false;
                        tracing::info!(
                            "{}/metrics shows no request queue (HTTP {}): the adaptive limit \
                             of this engine follows its latency and overload answers only",
                            self.bases[engine],
                            answer.status
                        );
                    }
                }
            }
        }
    }

    /// Requests at the engines now.
    pub fn at_engines(&self) -> usize {
        (0..self.bases.len()).map(|e| self.pool.in_flight(e)).sum()
    }

    /// The sum of the engines' adaptive limits (`None` with a fixed limit).
    pub fn concurrency_limit(&self) -> Option<usize> {
        (0..self.bases.len())
            .map(|e| self.pool.limit(e))
            .sum::<Option<usize>>()
    }
}

/// The waiting queue in Prometheus text: the sum of every sample of a known gauge (SGLang
/// splits it by priority when priority scheduling is on).
fn queue_of(text: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(gauge) = QUEUE_GAUGES.iter().find(|g| line.starts_with(*g)) else {
            continue;
        };
        let rest = &line[gauge.len()..];
        // `name{labels} value` or `name value`; a longer name sharing the prefix is not ours.
        let rest = match rest.strip_prefix('{') {
            Some(labels) => match labels.split_once('}') {
                // The per-priority split repeats the total under priority="": skip the total.
                Some((labels, _)) if labels.contains("priority=\"\"") => continue,
                Some((_, value)) => value,
                None => continue,
            },
            None if rest.starts_with(' ') => rest,
            None => continue,
        };
        if let Ok(v) = rest.trim().parse::<f64>() {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_are_read_from_sglang_and_vllm_metrics() {
        let sglang =
            "# HELP x\nsglang:num_queue_reqs{model_name=\"m\"} 7\nsglang:num_queue_reqs_other 99\n";
        assert_eq!(queue_of(sglang), Some(7.0));
        let vllm = "vllm:num_requests_waiting{model_name=\"m\"} 3.0\nvllm:num_requests_running 9\n";
        assert_eq!(queue_of(vllm), Some(3.0));
        let split = "sglang:num_queue_reqs{priority=\"\"} 5\nsglang:num_queue_reqs{priority=\"1\"} 2\n\
                     sglang:num_queue_reqs{priority=\"9\"} 3\n";
        assert_eq!(queue_of(split), Some(5.0));
        assert_eq!(queue_of("up 1\n"), None);
    }
}
