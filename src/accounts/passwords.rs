//! The password policy: at least 12 characters, and not one of the passwords attackers
//! try first (a list shipped inside the binary).

use std::collections::HashSet;
use std::sync::LazyLock;

/// Fewest characters a password may have.
pub const MIN_CHARS: usize = 12;
/// Most bytes a password may have (hashing cost stays bounded).
pub const MAX_BYTES: usize = 1024;

static COMMON: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("common-passwords.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
});

/// Why a password is refused, as a sentence for the person choosing it; `None` if it is fine.
pub fn problem(password: &str, email: &str) -> Option<String> {
    let chars = password.chars().count();
    if chars < MIN_CHARS {
        return Some(format!(
            "the password has {chars} characters; use at least {MIN_CHARS} (a few unrelated words work well)"
        ));
    }
    if password.len() > MAX_BYTES {
        return Some(format!("the password is longer than {MAX_BYTES} bytes"));
    }
    let lower = password.to_lowercase();
    let stem = lower.trim_end_matches(|c: char| !c.is_alphabetic());
    let common = COMMON.contains(lower.as_str()) || (stem.len() >= 3 && COMMON.contains(stem));
    let mut distinct: Vec<char> = lower.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    let local = email.split('@').next().unwrap_or("");
    if common || distinct.len() <= 2 {
        return Some("this password is among the first ones attackers try; choose another".into());
    }
    if lower == email || (local.len() >= 4 && stem == local) {
        return Some("the password must not be your email address".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::problem;

    #[test]
    fn short_common_and_email_like_passwords_are_refused() {
        let e = "ada@example.com";
        assert!(problem("short pass", e).is_some_and(|m| m.contains("at least 12")));
        assert!(problem("password1234", e).is_some(), "on the list");
        assert!(
            problem("Password2026!", e).is_some(),
            "a listed stem with digits"
        );
        assert!(problem("qwertyuiop123", e).is_some());
        assert!(
            problem("aaaaaaaaaaaaaaaa", e).is_some(),
            "one repeated character"
        );
        assert!(problem("ada@example.com", e).is_some());
        assert!(problem("correct horse battery", e).is_none());
        assert!(problem("Tr0ubadour&Basalt", e).is_none());
    }
}
