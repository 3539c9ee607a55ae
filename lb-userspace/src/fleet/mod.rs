//! Several appliances acting as one: the fleet's config from etcd (`etcd`). See
//! `docs/fleet.md`.

pub mod etcd;
