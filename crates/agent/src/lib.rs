//! ns-metadata-agent: see DESIGN.md. Built out by its issue.
#![forbid(unsafe_code)]
