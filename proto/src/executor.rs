//! Executors as the words people write and read (`host`, `container`,
//! `wasi`): one spelling for the CLI, the UI, the server's records and its
//! messages.

use crate::v1::Executor;

/// Every executor, in the order they are listed.
pub const EXECUTORS: [Executor; 3] = [Executor::Host, Executor::Container, Executor::Wasi];

/// The words of the executors.
pub const EXECUTOR_WORDS: &str = "host, container, wasi";

/// An executor's word, and back.
pub trait ExecutorWord: Sized {
    /// The word (`unspecified` for an unspecified executor).
    fn word(self) -> &'static str;
    /// The executor a word names (any case, surrounding spaces ignored).
    fn from_word(word: &str) -> Option<Self>;
}

impl ExecutorWord for Executor {
    fn word(self) -> &'static str {
        match self {
            Executor::Host => "host",
            Executor::Container => "container",
            Executor::Wasi => "wasi",
            Executor::Unspecified => "unspecified",
        }
    }

    fn from_word(word: &str) -> Option<Self> {
        EXECUTORS.into_iter().find(|e| e.word().eq_ignore_ascii_case(word.trim()))
    }
}

/// The words of executors as they travel (`i32`s); unknown values are
/// skipped.
pub fn executor_words(values: &[i32]) -> Vec<&'static str> {
    values.iter().filter_map(|v| Executor::try_from(*v).ok()).map(Executor::word).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for e in EXECUTORS {
            assert_eq!(Executor::from_word(e.word()), Some(e));
        }
        assert_eq!(Executor::from_word(" WASI "), Some(Executor::Wasi));
        assert_eq!(Executor::from_word("unspecified"), None);
        assert_eq!(Executor::from_word("docker"), None);
        assert_eq!(executor_words(&[1, 3, 99]), ["host", "wasi"]);
    }
}
