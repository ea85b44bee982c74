//! A tiny `--name value` / `--flag` reader. The driver is the only caller, so there is no help text: a missing or
//! malformed value is an error naming the option.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

pub struct Args {
    values: HashMap<String, String>,
    flags: HashSet<String>,
}

impl Args {
    /// `--name value` pairs; a `--name` followed by another `--name` (or nothing) is a flag.
    pub fn parse(words: &[String]) -> Result<Args, String> {
        let mut values = HashMap::new();
        let mut flags = HashSet::new();
        let mut words = words.iter().peekable();
        while let Some(word) = words.next() {
            let Some(name) = word.strip_prefix("--") else {
                return Err(format!("unexpected argument '{word}'"));
            };
            match words.peek() {
                Some(next) if !next.starts_with("--") => {
                    values.insert(name.to_string(), words.next().cloned().unwrap_or_default());
                }
                _ => {
                    flags.insert(name.to_string());
                }
            }
        }
        Ok(Args { values, flags })
    }

    pub fn text(&self, name: &str) -> Result<&str, String> {
        self.values
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| format!("--{name} is required"))
    }

    pub fn text_or<'a>(&'a self, name: &str, default: &'a str) -> &'a str {
        self.values.get(name).map_or(default, String::as_str)
    }

    /// A number, or `default` when the option is absent.
    pub fn number<T: FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.values.get(name) {
            None => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|_| format!("--{name}: '{text}' is not a valid number")),
        }
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.contains(name)
    }
}
