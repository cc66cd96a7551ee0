//! The HTTP surface: the JSON API for admins and agents, the dashboard, Prometheus metrics.

pub mod api;
pub mod dashboard;
