//! The tower layers of the policy: each reads its part of the request's configuration
//! snapshot (or a value of its own) and asks the engine of its module. Kept apart from the
//! engines so that the engines and the snapshot that holds them never depend on a layer.

pub mod authz;
pub mod jwt;
pub mod path;
pub mod registry;
pub mod routes;

pub use authz::{AuthzLayer, AuthzService};
pub use jwt::{JwtLayer, JwtService};
pub use path::{PathNormalize, PathNormalizeLayer};
pub use registry::{RegistryOnly, RegistryOnlyLayer};
pub use routes::{RouteLayer, Routing};

#[cfg(test)]
mod tests;
