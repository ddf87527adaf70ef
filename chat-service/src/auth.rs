//! Bearer-token authentication: HS256 JWTs whose `sub` is the numeric user id, plus the
//! `X-User-ID` header that existing clients send and that must name the same user.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::ids::UserId;

/// Why a request is not authenticated; the text goes back to the client (401), so it says what
/// to fix without echoing the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing `Authorization: Bearer <token>` header")]
    MissingToken,
    #[error("the Authorization header is not `Bearer <token>`")]
    NotBearer,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token must be signed with HS256")]
    WrongAlgorithm,
    #[error("token has no `exp` claim")]
    NoExpiry,
    #[error("token `sub` must be a positive integer user id")]
    BadSubject,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("missing X-User-ID header: it must carry the token's user id")]
    MissingUserHeader,
    #[error("X-User-ID ({header}) does not match the token's subject ({subject})")]
    UserMismatch { header: String, subject: UserId },
}

/// `sub` as issued: a JSON number or a numeric string.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum Subject {
    Number(i64),
    Text(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: Subject,
    // Optional here so that a token without it fails validation as "no exp", not as bad JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
}

fn user_id(n: i64) -> Option<UserId> {
    i32::try_from(n).ok().filter(|n| *n > 0).map(UserId)
}

impl Subject {
    fn user(&self) -> Option<UserId> {
        match self {
            Subject::Number(n) => user_id(*n),
            Subject::Text(s) => user_id(s.trim().parse().ok()?),
        }
    }
}

/// An authenticated user and the end of their token's validity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    pub user: UserId,
    pub expires: SystemTime,
}

/// Verifies (and, for tests and the load client, issues) tokens with the shared secret.
#[derive(Clone)]
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator(HS256)")
    }
}

impl Authenticator {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // The secret is this service's own; no audience is configured, so an `aud` claim set by
        // the issuer for its own purposes must not make every token fail.
        validation.validate_aud = false;
        validation.validate_nbf = true;
        // The default 60 s leeway would accept expired tokens for a minute.
        validation.leeway = 5;
        Authenticator {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
        }
    }

    /// The user a token belongs to.
    pub fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        self.verify_session(token).map(|s| s.user)
    }

    /// The user a token belongs to and until when it is valid.
    pub fn verify_session(&self, token: &str) -> Result<Session, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidAlgorithm => AuthError::WrongAlgorithm,
                ErrorKind::MissingRequiredClaim(c) if c == "exp" => AuthError::NoExpiry,
                _ => AuthError::Malformed(e.to_string()),
            })?;
        let user = data.claims.sub.user().ok_or(AuthError::BadSubject)?;
        // Validation has required `exp`.
        let expires = UNIX_EPOCH + Duration::from_secs(data.claims.exp.unwrap_or_default());
        Ok(Session { user, expires })
    }

    /// The user of a request: the bearer token's subject, which `X-User-ID` must repeat.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        user_header: Option<&str>,
    ) -> Result<UserId, AuthError> {
        self.authenticate_session(authorization, user_header)
            .map(|s| s.user)
    }

    /// [`Self::authenticate`], with the token's expiry.
    pub fn authenticate_session(
        &self,
        authorization: Option<&str>,
        user_header: Option<&str>,
    ) -> Result<Session, AuthError> {
        let token = bearer_token(authorization)?;
        let session = self.verify_session(token)?;
        check_user_header(session.user, user_header)?;
        Ok(session)
    }

    /// A token for `user` valid for `ttl` (subject as a number).
    pub fn issue(&self, user: UserId, ttl: Duration) -> String {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            + ttl;
        let claims = Claims {
            sub: Subject::Number(user.0.into()),
            exp: Some(exp.as_secs()),
        };
        // HS256 signing with an in-memory key cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default()
    }
}

/// The token of an `Authorization: Bearer <token>` header value (scheme case-insensitive).
pub fn bearer_token(header: Option<&str>) -> Result<&str, AuthError> {
    let header = header.ok_or(AuthError::MissingToken)?.trim();
    let (scheme, token) = header.split_once(' ').ok_or(AuthError::NotBearer)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::NotBearer);
    }
    Ok(token)
}

/// `X-User-ID` must be present and name the token's subject.
pub fn check_user_header(subject: UserId, header: Option<&str>) -> Result<(), AuthError> {
    let header = header.map(str::trim).ok_or(AuthError::MissingUserHeader)?;
    if header.parse::<i64>().ok() == Some(subject.0.into()) {
        Ok(())
    } else {
        Err(AuthError::UserMismatch {
            header: header.chars().take(32).collect(),
            subject,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new(b"test-secret-test-secret-test-secret")
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    fn sign(secret: &[u8], claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .expect("sign")
    }

    #[test]
    fn issued_tokens_verify() {
        let a = auth();
        let token = a.issue(UserId(42), Duration::from_secs(60));
        assert_eq!(a.verify(&token), Ok(UserId(42)));
        assert_eq!(
            a.authenticate(Some(&format!("Bearer {token}")), Some("42")),
            Ok(UserId(42))
        );
        assert_eq!(
            a.authenticate(Some(&format!("bearer  {token} ")), Some(" 42")),
            Ok(UserId(42))
        );
    }

    #[test]
    fn subject_may_be_a_number_or_numeric_string() {
        let a = auth();
        let secret = b"test-secret-test-secret-test-secret";
        let exp = now() + 60;
        assert_eq!(
            a.verify(&sign(secret, serde_json::json!({"sub": 7, "exp": exp}))),
            Ok(UserId(7))
        );
        assert_eq!(
            a.verify(&sign(secret, serde_json::json!({"sub": "7", "exp": exp}))),
            Ok(UserId(7))
        );
        for bad in [
            serde_json::json!("alice"),
            serde_json::json!(0),
            serde_json::json!(-3),
            serde_json::json!(1u64 << 40),
        ] {
            assert_eq!(
                a.verify(&sign(secret, serde_json::json!({"sub": bad, "exp": exp}))),
                Err(AuthError::BadSubject),
                "{bad}"
            );
        }
        assert!(matches!(
            a.verify(&sign(secret, serde_json::json!({"exp": exp}))),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn bad_tokens_are_rejected_with_a_reason() {
        let a = auth();
        let other = Authenticator::new(b"another-secret-another-secret-xx");
        assert_eq!(
            a.verify(&other.issue(UserId(1), Duration::from_secs(60))),
            Err(AuthError::BadSignature)
        );
        let secret = b"test-secret-test-secret-test-secret";
        assert_eq!(
            a.verify(&sign(
                secret,
                serde_json::json!({"sub": 1, "exp": now() - 120})
            )),
            Err(AuthError::Expired)
        );
        assert_eq!(
            a.verify(&sign(secret, serde_json::json!({"sub": 1}))),
            Err(AuthError::NoExpiry)
        );
        assert_eq!(
            a.verify(&sign(
                secret,
                serde_json::json!({"sub": 1, "exp": now() + 600, "nbf": now() + 300})
            )),
            Err(AuthError::NotYetValid)
        );
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &serde_json::json!({"sub": 1, "exp": now() + 60}),
            &EncodingKey::from_secret(secret),
        )
        .expect("sign");
        assert_eq!(a.verify(&hs512), Err(AuthError::WrongAlgorithm));
        assert!(matches!(
            a.verify("not.a.jwt"),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn authorization_header_forms() {
        assert_eq!(bearer_token(None), Err(AuthError::MissingToken));
        assert_eq!(bearer_token(Some("Basic abc")), Err(AuthError::NotBearer));
        assert_eq!(bearer_token(Some("Bearer ")), Err(AuthError::NotBearer));
        assert_eq!(bearer_token(Some("Bearer")), Err(AuthError::NotBearer));
        assert_eq!(bearer_token(Some("Bearer abc")), Ok("abc"));
    }

    #[test]
    fn user_header_must_match_the_subject() {
        assert_eq!(check_user_header(UserId(5), Some("5")), Ok(()));
        assert_eq!(
            check_user_header(UserId(5), None),
            Err(AuthError::MissingUserHeader)
        );
        let err = check_user_header(UserId(5), Some("6")).expect_err("mismatch");
        assert!(err.to_string().contains("does not match"), "{err}");
        assert!(check_user_header(UserId(5), Some("five")).is_err());
    }
}
