//! The open-files limit every long-running program of ours raises at start (issue #20: 2,000
//! namespaces hold 4,000 to 6,000 listening sockets in the spawner and in the shared server).

/// Raise the soft `RLIMIT_NOFILE` to the hard one. systemd starts services, and most shells
/// their commands, at 1,024 soft for programs that use `select(2)`, which none of ours does;
/// the hard limit is what the operator allows (`LimitNOFILE=`). Children inherit it.
/// Returns the limits in force afterwards, `(soft, hard)`.
pub fn raise_nofile_to_hard() -> std::io::Result<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
        return Ok((hard, hard));
    }
    Ok((soft, hard))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let (soft, hard) = super::raise_nofile_to_hard().expect("getrlimit");
        assert_eq!(soft, hard);
        let now = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .expect("getrlimit");
        assert_eq!(now, (soft, hard));
    }
}
