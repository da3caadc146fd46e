//! The spellings of the last release, kept working for one more:
//! `clima writer --sink kafka` (or `CLIMA_WRITER_SINK=kafka clima writer`)
//! is now `clima writer kafka`, and `clima consumer --source rabbitmq` (or
//! `CLIMA_CONSUMER_SOURCE`) is `clima consumer rabbitmq`. The old form is
//! rewritten into the new one before clap parses it, with a warning.

use std::ffi::OsString;

/// The services whose broker became a subcommand: (subcommand, old flag, old env var).
const MOVED: [(&str, &str, &str); 2] =
    [("writer", "--sink", "CLIMA_WRITER_SINK"), ("consumer", "--source", "CLIMA_CONSUMER_SOURCE")];

const BROKERS: [&str; 2] = ["kafka", "rabbitmq"];

/// `argv` in the new spelling, and a deprecation warning if it was in the old one.
pub(crate) fn upgrade(
    mut argv: Vec<OsString>,
    env: impl Fn(&str) -> Option<String>,
) -> (Vec<OsString>, Option<String>) {
    let Some((at, (service, flag, variable))) =
        argv.iter().enumerate().skip(1).find_map(|(at, arg)| Some((at, *MOVED.iter().find(|m| arg == m.0)?)))
    else {
        return (argv, None);
    };
    let given = argv.iter().enumerate().skip(at + 1).find_map(|(index, arg)| {
        let arg = arg.to_str()?;
        if arg == flag {
            Some((index, 2, argv.get(index + 1)?.to_str()?.to_owned()))
        } else {
            arg.strip_prefix(flag)?.strip_prefix('=').map(|value| (index, 1, value.to_owned()))
        }
    });
    // Already a broker subcommand (perhaps after global flags): the new spelling.
    let is_broker = |arg: &OsString| arg.to_str().is_some_and(|arg| BROKERS.contains(&arg));
    if given.is_none() && argv[at + 1..].iter().any(is_broker) {
        return (argv, None);
    }
    let (broker, old) = match given {
        Some((index, width, broker)) => {
            argv.drain(index..index + width);
            let old = format!("clima {service} {flag} {broker}");
            (broker, old)
        }
        None => match env(variable) {
            Some(broker) => {
                let old = format!("{variable}={broker} clima {service}");
                (broker, old)
            }
            None => return (argv, None),
        },
    };
    let warning = format!(
        "`{old}` is deprecated and goes in the next release; run `clima {service} {broker}` (whose --help \
         lists only that broker's flags)"
    );
    argv.insert(at + 1, broker.into());
    (argv, Some(warning))
}

#[cfg(test)]
mod tests {
    use super::upgrade;

    fn run(argv: &[&str], env: &[(&str, &str)]) -> (Vec<String>, bool) {
        let argv = argv.iter().map(Into::into).collect();
        let lookup = |name: &str| env.iter().find(|(key, _)| *key == name).map(|(_, value)| (*value).to_owned());
        let (argv, warning) = upgrade(argv, lookup);
        (argv.into_iter().map(|arg| arg.into_string().unwrap()).collect(), warning.is_some())
    }

    #[test]
    fn the_old_flags_become_the_broker_subcommand_with_a_warning() {
        assert_eq!(
            run(&["clima", "writer", "--sink", "kafka", "--max-records", "5"], &[]),
            (vec!["clima".into(), "writer".into(), "kafka".into(), "--max-records".into(), "5".into()], true)
        );
        assert_eq!(
            run(&["clima", "--log-format", "json", "consumer", "--store-url", "redis://x", "--source=rabbitmq"], &[]),
            (
                ["clima", "--log-format", "json", "consumer", "rabbitmq", "--store-url", "redis://x"]
                    .map(String::from)
                    .to_vec(),
                true
            )
        );
    }

    #[test]
    fn the_old_env_vars_name_the_broker_when_the_command_line_does_not() {
        assert_eq!(
            run(&["clima", "consumer"], &[("CLIMA_CONSUMER_SOURCE", "kafka")]),
            (["clima", "consumer", "kafka"].map(String::from).to_vec(), true)
        );
        // The new spelling wins over a leftover env var, and is left alone,
        // global flags before the broker included.
        for argv in [&["clima", "writer", "rabbitmq"][..], &["clima", "writer", "--log-format", "json", "rabbitmq"]] {
            assert_eq!(
                run(argv, &[("CLIMA_WRITER_SINK", "kafka")]),
                (argv.iter().map(|arg| (*arg).to_owned()).collect(), false)
            );
        }
    }

    #[test]
    fn other_commands_and_the_new_spelling_are_untouched() {
        for argv in [&["clima", "api", "--writer", "http://writer:50051"][..], &["clima", "writer", "--help"]] {
            assert_eq!(run(argv, &[]), (argv.iter().map(|arg| (*arg).to_owned()).collect(), false));
        }
    }
}
