//! API tokens from `api_tokens_file`: lines `name:token` or
//! `name:token:read`. Re-read when the file changes — polled, so every way
//! of replacing it (an editor, a Kubernetes Secret's symlink swap) is seen.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub name: String,
    secret: Vec<u8>,
    pub read_only: bool,
}

/// What a request's bearer token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// No tokens are configured: `/v1` is unavailable.
    Disabled,
    /// Missing or unknown token.
    Denied,
    Granted {
        name: String,
        read_only: bool,
    },
}

#[derive(Debug, Default)]
pub struct Tokens {
    /// `None` when no tokens file is configured.
    current: ArcSwap<Option<Vec<Token>>>,
}

impl Tokens {
    pub fn new(tokens: Option<Vec<Token>>) -> Self {
        Tokens {
            current: ArcSwap::from_pointee(tokens),
        }
    }

    /// Checks `Authorization: Bearer <token>` against every configured
    /// token in constant time.
    pub fn check(&self, authorization: Option<&str>) -> Access {
        let tokens = self.current.load();
        let Some(tokens) = tokens.as_ref() else {
            return Access::Disabled;
        };
        let Some(presented) = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
        else {
            return Access::Denied;
        };
        let mut found: Option<&Token> = None;
        for token in tokens {
            // Compare with every token, so timing tells nothing.
            if bool::from(token.secret.as_slice().ct_eq(presented.as_bytes())) && found.is_none() {
                found = Some(token);
            }
        }
        match found {
            Some(t) => Access::Granted {
                name: t.name.clone(),
                read_only: t.read_only,
            },
            None => Access::Denied,
        }
    }

    pub fn replace(&self, tokens: Option<Vec<Token>>) {
        self.current.store(Arc::new(tokens));
    }
}

/// Parses the tokens file. Blank lines and `#` comments are skipped.
pub fn parse(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.split(':').collect();
        let (name, secret, read_only) = match parts.as_slice() {
            [name, secret] => (*name, *secret, false),
            [name, secret, "read"] => (*name, *secret, true),
            _ => {
                return Err(format!(
                    "line {}: expected name:token or name:token:read",
                    i + 1
                ));
            }
        };
        if name.is_empty() || secret.len() < 16 {
            return Err(format!(
                "line {}: the name must not be empty and the token must have at least 16 characters",
                i + 1
            ));
        }
        tokens.push(Token {
            name: name.to_owned(),
            secret: secret.as_bytes().to_vec(),
            read_only,
        });
    }
    Ok(tokens)
}

/// Loads the file, then keeps `tokens` up to date with it on a background
/// task. An unreadable or invalid file keeps the previous tokens.
pub fn watch(path: PathBuf, tokens: Arc<Tokens>) -> Result<(), String> {
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    tokens.replace(Some(
        parse(&text).map_err(|e| format!("{}: {e}", path.display()))?,
    ));
    std::thread::Builder::new()
        .name("bouncer-tokens".into())
        .spawn(move || poll(&path, &tokens, text))
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn poll(path: &Path, tokens: &Tokens, mut last: String) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        if text == last {
            continue;
        }
        match parse(&text) {
            Ok(parsed) => {
                tracing::info!(file = %path.display(), tokens = parsed.len(), "api tokens reloaded");
                tokens.replace(Some(parsed));
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "invalid api tokens file; previous tokens stay")
            }
        }
        last = text;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_grant_by_name_and_mode() {
        let tokens = Tokens::new(Some(
            parse("# ops\nops:0123456789abcdef0123\nviewer:fedcba9876543210fedc:read\n").unwrap(),
        ));
        assert_eq!(
            tokens.check(Some("Bearer 0123456789abcdef0123")),
            Access::Granted {
                name: "ops".into(),
                read_only: false
            }
        );
        assert_eq!(
            tokens.check(Some("Bearer fedcba9876543210fedc")),
            Access::Granted {
                name: "viewer".into(),
                read_only: true
            }
        );
        assert_eq!(tokens.check(Some("Bearer nope")), Access::Denied);
        assert_eq!(tokens.check(None), Access::Denied);
        assert_eq!(
            tokens.check(Some("Basic 0123456789abcdef0123")),
            Access::Denied
        );
        assert_eq!(Tokens::new(None).check(Some("Bearer x")), Access::Disabled);
    }

    #[test]
    fn malformed_lines_are_refused() {
        assert!(parse("ops").is_err());
        assert!(parse("ops:short").is_err());
        assert!(parse("ops:0123456789abcdef0123:write").is_err());
    }

    #[test]
    fn a_changed_file_is_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "a:0123456789abcdef0123\n").unwrap();
        let tokens = Arc::new(Tokens::default());
        watch(path.clone(), tokens.clone()).unwrap();
        assert!(matches!(
            tokens.check(Some("Bearer 0123456789abcdef0123")),
            Access::Granted { .. }
        ));
        std::fs::write(dir.path().join("tmp"), "b:fedcba9876543210fedc\n").unwrap();
        std::fs::rename(dir.path().join("tmp"), &path).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tokens.check(Some("Bearer fedcba9876543210fedc")) == Access::Denied {
            assert!(
                std::time::Instant::now() < deadline,
                "new token never accepted"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            tokens.check(Some("Bearer 0123456789abcdef0123")),
            Access::Denied
        );
    }
}
