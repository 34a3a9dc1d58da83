//! The sidecar injector: admission webhook, `<app-id>-dapr` Service reconciler and offline
//! `render`. Today: the `dapr.io/*` annotation names it honours, in one place.

pub mod annotations;
