//! A fleet of mail servers fed by one gate. The gate vets a release once,
//! publishes it as a signed static tree ([`tree`], [`sign`], served by
//! [`serve`] or any web server) and rolls it out ring by ring, each ring
//! gated on its hosts' `/readyz` ([`rollout`], a pure state machine, driven
//! by [`drive`]). A host follows its ring's pointer ([`source`]) and
//! promotes through its own gate and [`crate::promote::Activator`].

pub(crate) mod config;
pub(crate) mod sign;
pub(crate) mod serve;
pub(crate) mod tree;
