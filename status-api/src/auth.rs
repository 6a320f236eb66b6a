//! User tokens: a user may only see their own status. Tokens are HS256 JWTs naming the user
//! (`sub`) with an expiry (`exp`), accepted as `Authorization: Bearer <token>` or as a `token`
//! query parameter (browsers' EventSource cannot set headers).

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Token claims.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    pub iat: u64,
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    #[error("missing token: send Authorization: Bearer <token> or ?token=")]
    Missing,
    #[error("invalid or expired token")]
    Invalid,
    #[error("this token is for another user")]
    WrongUser,
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::Missing | Self::Invalid => StatusCode::UNAUTHORIZED,
            Self::WrongUser => StatusCode::FORBIDDEN,
        };
        metrics::counter!("auth_refused_total", "status" => status.as_u16().to_string())
            .increment(1);
        (
            status,
            axum::Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

/// Mints and checks tokens with one shared secret.
#[derive(Clone)]
pub struct TokenSigner {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenSigner {
    /// Refuses an empty secret.
    pub fn new(secret: &[u8]) -> anyhow::Result<Self> {
        anyhow::ensure!(!secret.is_empty(), "the token secret must not be empty");
        Ok(Self {
            encoding: EncodingKey::from_secret(secret)?,
            decoding: DecodingKey::from_secret(secret)?,
        })
    }

    /// A token for `user_id`, valid for `ttl_secs`.
    pub fn mint(&self, user_id: &str, ttl_secs: u64) -> String {
        let iat = now_secs();
        let claims = Claims {
            sub: user_id.to_string(),
            exp: iat + ttl_secs,
            iat,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 encoding cannot fail")
    }

    /// The user a token names, if it is valid and unexpired.
    pub fn verify(&self, token: &str) -> Result<String, AuthError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 5;
        decode::<Claims>(token, &self.decoding, &v)
            .map(|d| d.claims.sub)
            .map_err(|_| AuthError::Invalid)
    }

    /// Check that the request carries a valid token for `user_id`.
    pub fn authorize(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
        user_id: &str,
    ) -> Result<(), AuthError> {
        let bearer = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let token = bearer.or(query_token).ok_or(AuthError::Missing)?;
        if self.verify(token)? == user_id {
            Ok(())
        } else {
            Err(AuthError::WrongUser)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_verify_and_refuse() {
        let s = TokenSigner::new(b"secret").unwrap();
        let t = s.mint("u1", 60);
        assert_eq!(s.verify(&t).unwrap(), "u1");
        assert_eq!(
            TokenSigner::new(b"other").unwrap().verify(&t),
            Err(AuthError::Invalid)
        );
        assert_eq!(s.verify("not.a.token"), Err(AuthError::Invalid));
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {t}").parse().unwrap());
        assert_eq!(s.authorize(&h, None, "u1"), Ok(()));
        assert_eq!(s.authorize(&h, None, "u2"), Err(AuthError::WrongUser));
        assert_eq!(s.authorize(&HeaderMap::new(), Some(&t), "u1"), Ok(()));
        assert_eq!(
            s.authorize(&HeaderMap::new(), None, "u1"),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn expired_tokens_are_refused() {
        let s = TokenSigner::new(b"secret").unwrap();
        let claims = Claims {
            sub: "u1".into(),
            exp: now_secs() - 60,
            iat: now_secs() - 120,
        };
        let t = encode(&Header::new(Algorithm::HS256), &claims, &s.encoding).unwrap();
        assert_eq!(s.verify(&t), Err(AuthError::Invalid));
    }
}
