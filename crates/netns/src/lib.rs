//! Network namespaces and rtnetlink: open, enter, create, delete, watch; addresses and links.
//! This is the only crate of the workspace allowed to use `unsafe`.
