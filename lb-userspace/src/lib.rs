//! `lb`: an HTTP/1.1, HTTP/2 and gRPC load balancer with TLS on thread-per-core monoio workers.
//!
//! A request's way through, by module: `worker` (accept on a pinned core) → `proxy` (read the
//! head, plan, exchange) using `http` (codec) → `routing` (which cluster) → `balancing` (which
//! endpoint) → `upstream` (pooled connection) → back out. `config` and `snapshot` hold what the
//! workers decide from; `control`, `server` and `admin` are the control side.

pub mod accesslog;
pub mod acme;
pub mod admin;
pub mod balancing;
pub mod client;
pub mod clock;
pub mod config;
pub mod connlimit;
pub mod control;
pub mod demo;
pub mod dryrun;
pub mod fleet;
pub mod h2io;
pub mod hash;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod net;
pub mod openapi;
pub mod proxy;
pub mod ratelimit;
pub mod release;
pub mod routing;
pub mod server;
pub mod snapshot;
pub mod steering;
pub mod timer;
pub mod tls;
pub mod upstream;
pub mod validation;
pub mod worker;
