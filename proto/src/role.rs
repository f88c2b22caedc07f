//! Roles as the words people write and read (`read`, `maintain`…): one
//! spelling for the CLI, the server's flags and its messages.

use crate::v1::Role;

/// The words of the roles, lowest first.
pub const ROLE_WORDS: &str = "read, trigger, push, maintain, admin";

/// A role's word, and back.
pub trait RoleWord: Sized {
    /// The word (`none` for an unspecified role).
    fn word(self) -> &'static str;
    /// The role a word names (any case, surrounding spaces ignored).
    fn from_word(word: &str) -> Option<Self>;
}

impl RoleWord for Role {
    fn word(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Trigger => "trigger",
            Role::Push => "push",
            Role::Maintain => "maintain",
            Role::Admin => "admin",
            Role::Unspecified => "none",
        }
    }

    fn from_word(word: &str) -> Option<Self> {
        [Role::Read, Role::Trigger, Role::Push, Role::Maintain, Role::Admin]
            .into_iter()
            .find(|r| r.word().eq_ignore_ascii_case(word.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for r in [Role::Read, Role::Trigger, Role::Push, Role::Maintain, Role::Admin] {
            assert_eq!(Role::from_word(r.word()), Some(r));
        }
        assert_eq!(Role::from_word(" Admin "), Some(Role::Admin));
        assert_eq!(Role::from_word("none"), None);
        assert_eq!(Role::from_word("owner"), None);
    }
}
