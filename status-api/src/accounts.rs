//! Local console accounts: a file of `user:argon2-PHC-hash[:operator]` lines
//! (`STATUS_ACCOUNTS_FILE`), checked with argon2 so that the file never holds a password.
//! `status-api hash-password` makes the hashes. `operator` accounts may also see the
//! operations pages (Services, Dashboard: every user's failures) and change Settings.
//! A deployment with a real identity provider would replace this module.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use std::collections::HashMap;
use std::path::Path;

/// Why an accounts file was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("cannot read accounts file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("accounts file line {line}: {why}")]
    Line { line: usize, why: String },
}

/// User name → (argon2 hash as a PHC string, operator?).
#[derive(Debug, Default, Clone)]
pub struct Accounts {
    hashes: HashMap<String, (String, bool)>,
    /// Hash of a random password, verified against when the user is unknown, so that a
    /// wrong user name takes as long as a wrong password (no user enumeration by timing).
    decoy: String,
}

/// Whether `user` is an acceptable account name: it becomes an S3 key prefix and a path
/// segment, so only `[A-Za-z0-9._-]`, 1–64 characters, not starting with a dot.
pub fn valid_user_name(user: &str) -> bool {
    (1..=64).contains(&user.len())
        && !user.starts_with('.')
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// An argon2id hash (default parameters, random salt) of `password`, as a PHC string.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters cannot fail")
        .to_string()
}

impl Accounts {
    /// Parse `user:hash` lines; blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<Self, AccountsError> {
        let mut hashes = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |why: &str| AccountsError::Line {
                line: i + 1,
                why: why.to_string(),
            };
            let (user, rest) = line
                .split_once(':')
                .ok_or_else(|| err("expected user:argon2-hash[:operator]"))?;
            // A PHC string has no ':', so a third field is unambiguous.
            let (hash, operator) = match rest.split_once(':') {
                None => (rest, false),
                Some((h, "operator")) => (h, true),
                Some(_) => return Err(err("the only role is `operator`")),
            };
            if !valid_user_name(user) {
                return Err(err("user names are 1-64 of [A-Za-z0-9._-]"));
            }
            PasswordHash::new(hash).map_err(|e| {
                err(&format!(
                    "not a PHC hash ({e}); use status-api hash-password"
                ))
            })?;
            if hashes
                .insert(user.to_string(), (hash.to_string(), operator))
                .is_some()
            {
                return Err(err("duplicate user"));
            }
        }
        Ok(Self {
            hashes,
            decoy: hash_password(&format!("{:x}", rand::random::<u128>())),
        })
    }

    /// Read an accounts file; a missing path means no accounts (login always fails).
    pub fn load(path: Option<&Path>) -> Result<Self, AccountsError> {
        match path {
            None => Self::parse(""),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| AccountsError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                Self::parse(&text)
            }
        }
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Whether `user` is an operator.
    pub fn is_operator(&self, user: &str) -> bool {
        self.hashes.get(user).is_some_and(|(_, op)| *op)
    }

    /// Whether `password` is `user`'s. Slow on purpose (argon2): call off the async threads.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let (hash, known) = match self.hashes.get(user) {
            Some((h, _)) => (h.as_str(), true),
            None => (self.decoy.as_str(), false),
        };
        let ok = PasswordHash::new(hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        ok && known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_right_and_wrong_passwords() {
        let text = format!(
            "# demo\nalice:{}\nroot:{}:operator\n",
            hash_password("s3cret"),
            hash_password("x")
        );
        let a = Accounts::parse(&text).unwrap();
        assert_eq!(a.len(), 2);
        assert!(a.is_operator("root") && !a.is_operator("alice") && !a.is_operator("bob"));
        assert!(a.verify("root", "x"));
        assert!(a.verify("alice", "s3cret"));
        assert!(!a.verify("alice", "S3cret"));
        assert!(!a.verify("bob", "s3cret"));
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        let e = Accounts::parse("alice:plaintext").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("PHC"), "{e}");
        let e = Accounts::parse("\n../x:$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(!valid_user_name("a/b") && !valid_user_name("") && valid_user_name("demo_1"));
    }
}
