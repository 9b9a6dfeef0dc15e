//! The resolvers, one file each, each implementing [`crate::resolve::Resolver`] and selected
//! by a value of the `resolver` option (`config::ResolverKind`, built in `build_resolver`).

pub mod inventory;
pub mod ovn;
