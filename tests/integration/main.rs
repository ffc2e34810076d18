//! Integration tests: the real `batch-runner` binary, spawned, talking to real sim-engine
//! processes over real sockets and files. One test binary (shared `common` helpers).

mod common;
mod dashboard;
mod distributed;
mod durable;
mod flow;
mod input;
mod launch;
mod media;
mod mixed_models;
mod objects;
mod outage;
mod profiles;
mod remote;
mod run;
mod scheduling;
mod service;
mod sim_engine;
mod validate;
mod webhooks;
