//! Composing the guest kernel command line: kiln's defaults, the host's
//! needs, device descriptions and the user's own, where the user's
//! parameters win over defaults of the same name and everything after
//! " -- " stays last (Linux passes it to init).

/// Splits a command line into the kernel part and init's arguments.
pub fn split_init_args(cmdline: &str) -> (&str, Option<&str>) {
    let t = cmdline.trim();
    if let Some(rest) = t.strip_prefix("--") {
        if rest.is_empty() || rest.starts_with(' ') {
            return ("", Some(rest.trim()));
        }
    }
    match t.find(" -- ") {
        Some(i) => (t[..i].trim(), Some(t[i + 4..].trim())),
        None if t.ends_with(" --") => (t[..t.len() - 3].trim(), Some("")),
        None => (t, None),
    }
}

fn key(param: &str) -> &str {
    param.split('=').next().unwrap_or(param)
}

/// Builds the final command line. `defaults` are dropped where the user
/// gives a parameter of the same name; `devices` are always kept.
pub fn compose(defaults: &[&str], devices: &[String], user: &str) -> String {
    let (user_kernel, init_args) = split_init_args(user);
    let user_keys: Vec<&str> = user_kernel.split_whitespace().map(key).collect();
    let mut parts: Vec<&str> = Vec::new();
    for d in defaults.iter().flat_map(|d| d.split_whitespace()) {
        if !user_keys.contains(&key(d)) {
            parts.push(d);
        }
    }
    parts.extend(devices.iter().map(String::as_str));
    parts.extend(user_kernel.split_whitespace());
    let mut s = parts.join(" ");
    if let Some(args) = init_args {
        s.push_str(" --");
        if !args.is_empty() {
            s.push(' ');
            s.push_str(args);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_init_arguments() {
        assert_eq!(
            split_init_args("quiet -- echo hi"),
            ("quiet", Some("echo hi"))
        );
        assert_eq!(split_init_args("-- uname -r"), ("", Some("uname -r")));
        assert_eq!(split_init_args("a b"), ("a b", None));
        assert_eq!(split_init_args("a --"), ("a", Some("")));
        assert_eq!(split_init_args("--foo"), ("--foo", None));
    }

    #[test]
    fn user_overrides_defaults_and_args_stay_last() {
        let s = compose(
            &[
                "console=ttyS0 reboot=k panic=-1",
                "noxsave clearcpuid=popcnt,smap",
            ],
            &["virtio_mmio.device=4K@0xd0000000:5".to_string()],
            "clearcpuid=popcnt quiet -- sh -c 'exit 3'",
        );
        assert_eq!(
            s,
            "console=ttyS0 reboot=k panic=-1 noxsave virtio_mmio.device=4K@0xd0000000:5 \
             clearcpuid=popcnt quiet -- sh -c 'exit 3'"
        );
    }

    #[test]
    fn empty_user_cmdline() {
        assert_eq!(compose(&["console=ttyS0"], &[], ""), "console=ttyS0");
    }
}
