// SPDX-License-Identifier: MIT
//! Parsing of a launcher's call arguments: `@NAME`, `%option` and the `--` escape.
//!
//! A pilot forwards its arguments to the app, except for two conventions inherited from the
//! original launchers:
//! - `@NAME` selects a named instance (at most one per call);
//! - `%option` or `%option:value` sets a pilot option (see [`PilotOptions`]).
//!
//! Escape: an argument `--` stops the recognition of both. When `--` is the *first*
//! argument it is consumed, so `app -- @x %s` hands `@x %s` to the app; anywhere else it is
//! itself passed on (the app may need it, as in `git log -- file`) and everything after it is
//! passed verbatim.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

use crate::names::{InstanceName, NameError};

/// Errors in the pilot's own call arguments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallArgError {
    /// An `@NAME` argument is not a valid instance name.
    #[error(transparent)]
    Instance(#[from] NameError),
    /// Two `@NAME` arguments in one call.
    #[error("two instance names given (@{first} and @{second}); give at most one")]
    TwoInstances {
        /// The first name.
        first: String,
        /// The second name.
        second: String,
    },
    /// A `%option` the pilots do not know.
    #[error(
        "unknown pilot option '%{key}' (known: %interactive %progress %remove \
         %ignore_missing_volume_path %ignore_sync_error %port:N); to pass it to the app, put \
         it after --"
    )]
    UnknownOption {
        /// The option name.
        key: String,
    },
    /// A `%option:value` with a value that does not fit the option.
    #[error("pilot option '%{key}' has an invalid value '{value}': {hint}")]
    BadValue {
        /// The option name.
        key: String,
        /// The value given.
        value: String,
        /// What is expected.
        hint: &'static str,
    },
}

/// Every `%option` name the pilots accept (`port` takes a value: `%port:N`). The parser
/// takes only these, so an option is documented (the launchers' man pages are checked
/// against this list) before it can have an effect.
pub const OPTIONS: &[&str] = &[
    "interactive",
    "progress",
    "remove",
    "ignore_missing_volume_path",
    "ignore_sync_error",
    "port",
];

/// Options given to the pilot as `%option` arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PilotOptions {
    /// `%interactive`: allocate a terminal when stdin is one, even if stdout is redirected.
    pub interactive: bool,
    /// `%progress`: show what the engine does before the app starts (e.g. image pulls).
    pub progress: bool,
    /// `%remove`: remove the instance after this call, also in resume or attach mode.
    pub remove: bool,
    /// `%ignore_missing_volume_path`: drop volume options whose host path does not exist.
    pub ignore_missing_volume_path: bool,
    /// `%ignore_sync_error`: provisioning failures do not stop the launch.
    pub ignore_sync_error: bool,
    /// `%port:N`: host port for the VM guest channel.
    pub port: Option<u32>,
}

/// A parsed pilot call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallArgs {
    /// The `@NAME` instance, if given.
    pub instance: Option<InstanceName>,
    /// The `%` options.
    pub options: PilotOptions,
    /// Everything else, in order, for the app.
    pub app_args: Vec<OsString>,
}

impl CallArgs {
    /// Parses the arguments after `argv[0]`.
    ///
    /// # Example
    /// ```
    /// use std::ffi::OsString;
    /// let args = ["@dev", "%remove", "-c", "echo hi"].map(OsString::from);
    /// let call = flakes::CallArgs::parse(args).unwrap();
    /// assert_eq!(call.instance.unwrap().as_str(), "dev");
    /// assert!(call.options.remove);
    /// assert_eq!(call.app_args, ["-c", "echo hi"].map(OsString::from));
    /// ```
    pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Self, CallArgError> {
        let mut call = CallArgs::default();
        let mut args = args.into_iter().peekable();
        if args.peek().is_some_and(|a| a.as_bytes() == b"--") {
            args.next();
            call.app_args.extend(args);
            return Ok(call);
        }
        while let Some(arg) = args.next() {
            match arg.as_bytes() {
                b"--" => {
                    call.app_args.push(arg);
                    call.app_args.extend(args.by_ref());
                }
                [b'@', rest @ ..] => call.set_instance(rest)?,
                [b'%', rest @ ..] => call.options.set(rest)?,
                _ => call.app_args.push(arg),
            }
        }
        Ok(call)
    }

    fn set_instance(&mut self, raw: &[u8]) -> Result<(), CallArgError> {
        let text = String::from_utf8_lossy(raw);
        let name = InstanceName::new(&text)?;
        if let Some(first) = &self.instance {
            return Err(CallArgError::TwoInstances {
                first: first.to_string(),
                second: name.to_string(),
            });
        }
        self.instance = Some(name);
        Ok(())
    }
}

impl PilotOptions {
    fn set(&mut self, raw: &[u8]) -> Result<(), CallArgError> {
        let text = String::from_utf8_lossy(raw);
        // The original splits at the last ':' so that values may not contain one; keep that.
        let (key, value) = match text.rsplit_once(':') {
            Some((key, value)) => (key, Some(value)),
            None => (text.as_ref(), None),
        };
        if !OPTIONS.contains(&key) {
            return Err(CallArgError::UnknownOption {
                key: key.to_string(),
            });
        }
        match key {
            "interactive" => self.interactive = true,
            "progress" => self.progress = true,
            "remove" => self.remove = true,
            "ignore_missing_volume_path" => self.ignore_missing_volume_path = true,
            "ignore_sync_error" => self.ignore_sync_error = true,
            "port" => self.port = Some(parse_port(value.unwrap_or_default())?),
            _ => {
                return Err(CallArgError::UnknownOption {
                    key: key.to_string(),
                })
            }
        }
        Ok(())
    }
}

fn parse_port(value: &str) -> Result<u32, CallArgError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| CallArgError::BadValue {
            key: "port".into(),
            value: value.into(),
            hint: "expected a positive number, e.g. %port:49200",
        })
}

/// Whether stdin and stdout are terminals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Terminal {
    /// stdin is a terminal.
    pub stdin: bool,
    /// stdout is a terminal.
    pub stdout: bool,
}

impl Terminal {
    /// Reads the terminal state of the current process.
    pub fn detect() -> Self {
        use std::io::IsTerminal;
        Terminal {
            stdin: std::io::stdin().is_terminal(),
            stdout: std::io::stdout().is_terminal(),
        }
    }

    /// A terminal is allocated when stdin and stdout are terminals, or stdin is one and the
    /// call asked for `%interactive`.
    pub fn wants_tty(self, call: &CallArgs) -> bool {
        self.stdin && (self.stdout || call.options.interactive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<CallArgs, CallArgError> {
        CallArgs::parse(args.iter().map(OsString::from))
    }

    #[test]
    fn every_listed_option_is_taken_and_named_in_the_unknown_option_error() {
        let unknown = parse(&["%nonsense"]).unwrap_err().to_string();
        for option in OPTIONS {
            let arg = format!("%{option}:1");
            let arg = if *option == "port" {
                arg
            } else {
                format!("%{option}")
            };
            let call = parse(&[&arg]).unwrap();
            assert_ne!(call.options, PilotOptions::default(), "{arg} has no effect");
            assert!(unknown.contains(&format!("%{option}")), "{unknown}");
        }
    }

    fn app_args(call: &CallArgs) -> Vec<&str> {
        call.app_args.iter().map(|a| a.to_str().unwrap()).collect()
    }

    #[test]
    fn plain_arguments_pass_through_in_order() {
        let call = parse(&["ec2", "help", "-x", "a b"]).unwrap();
        assert_eq!(app_args(&call), ["ec2", "help", "-x", "a b"]);
        assert_eq!(call.instance, None);
        assert_eq!(call.options, PilotOptions::default());
    }

    #[test]
    fn instance_and_options_anywhere_before_escape() {
        let call = parse(&["x", "@one", "y", "%remove", "%progress"]).unwrap();
        assert_eq!(call.instance.as_ref().unwrap().as_str(), "one");
        assert!(call.options.remove && call.options.progress);
        assert_eq!(app_args(&call), ["x", "y"]);
    }

    #[test]
    fn every_option_spelling() {
        type Check = fn(&PilotOptions) -> bool;
        let cases: &[(&str, Check)] = &[
            ("%interactive", |o| o.interactive),
            ("%progress", |o| o.progress),
            ("%remove", |o| o.remove),
            ("%ignore_missing_volume_path", |o| {
                o.ignore_missing_volume_path
            }),
            ("%ignore_sync_error", |o| o.ignore_sync_error),
            ("%port:49200", |o| o.port == Some(49200)),
        ];
        for (arg, check) in cases {
            let call = parse(&[arg]).unwrap();
            assert!(check(&call.options), "{arg}");
            assert!(call.app_args.is_empty(), "{arg}");
        }
    }

    #[test]
    fn leading_escape_is_consumed_and_passes_everything() {
        let call = parse(&["--", "@{u}", "%s", "--"]).unwrap();
        assert_eq!(app_args(&call), ["@{u}", "%s", "--"]);
        assert_eq!(call.instance, None);
    }

    #[test]
    fn later_escape_is_kept_for_the_app() {
        let call = parse(&["log", "@dev", "--", "@{u}", "%remove"]).unwrap();
        assert_eq!(app_args(&call), ["log", "--", "@{u}", "%remove"]);
        assert_eq!(call.instance.unwrap().as_str(), "dev");
        assert!(!call.options.remove);
    }

    #[test]
    fn bad_input_is_refused_with_hint() {
        assert!(matches!(parse(&["@{u}"]), Err(CallArgError::Instance(_))));
        assert!(matches!(parse(&["@"]), Err(CallArgError::Instance(_))));
        assert!(matches!(
            parse(&["@a", "@b"]),
            Err(CallArgError::TwoInstances { .. })
        ));
        let err = parse(&["%s"]).unwrap_err();
        assert!(err.to_string().contains("after --"), "{err}");
        assert!(matches!(
            parse(&["%port:x"]),
            Err(CallArgError::BadValue { .. })
        ));
        assert!(matches!(
            parse(&["%port"]),
            Err(CallArgError::BadValue { .. })
        ));
    }

    #[test]
    fn non_utf8_app_arguments_survive() {
        use std::os::unix::ffi::OsStringExt;
        let raw = OsString::from_vec(vec![0xff, b'a']);
        let call = CallArgs::parse([raw.clone()]).unwrap();
        assert_eq!(call.app_args, [raw]);
    }
}

#[cfg(test)]
mod properties {
    use std::os::unix::ffi::OsStringExt;

    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    /// Arguments a caller may give, with the prefixes and the escape the parser looks at.
    fn arg() -> impl Strategy<Value = OsString> {
        prop_oneof![
            vec(any::<u8>(), 0..12).prop_map(OsString::from_vec),
            "[@%-]{0,2}[a-z_=:0-9{}-]{0,12}".prop_map(OsString::from),
            Just(OsString::from("--")),
        ]
    }

    /// The app's arguments as the module documentation describes them.
    fn documented_app_args(args: &[OsString]) -> Vec<OsString> {
        if args.first().is_some_and(|a| a.as_bytes() == b"--") {
            return args[1..].to_vec();
        }
        let escape = args
            .iter()
            .position(|a| a.as_bytes() == b"--")
            .unwrap_or(args.len());
        let (head, tail) = args.split_at(escape);
        head.iter()
            .filter(|a| !matches!(a.as_bytes().first(), Some(b'@' | b'%')))
            .chain(tail)
            .cloned()
            .collect()
    }

    proptest! {
        #[test]
        fn a_leading_escape_passes_every_argument_verbatim(args in vec(arg(), 0..8)) {
            let escaped = std::iter::once(OsString::from("--")).chain(args.iter().cloned());
            let call = CallArgs::parse(escaped).unwrap();
            prop_assert_eq!(call.app_args, args);
            prop_assert_eq!(call.instance, None);
            prop_assert_eq!(call.options, PilotOptions::default());
        }

        #[test]
        fn the_app_gets_the_documented_arguments_in_order(args in vec(arg(), 0..8)) {
            if let Ok(call) = CallArgs::parse(args.clone()) {
                prop_assert_eq!(call.app_args, documented_app_args(&args));
            }
        }

        #[test]
        fn an_instance_name_survives_the_call(name in "[A-Za-z0-9@=_-]{1,63}", args in vec(arg(), 0..4)) {
            let mut argv = vec![OsString::from(format!("@{name}"))];
            argv.extend(args.iter().filter(|a| !a.as_bytes().starts_with(b"@")).cloned());
            if let Ok(call) = CallArgs::parse(argv) {
                prop_assert_eq!(call.instance.map(|i| i.to_string()), Some(name));
            }
        }
    }
}
