//! The flow decisions, one per request, as pure functions of the configuration, the provider
//! state, the request and the time.
//!
//! * bypass path → [`Decision::Pass`];
//! * logout path → clear the session, 302 to the provider's `end_session_endpoint` (RP-initiated
//!   logout) or to a checked `return_to`;
//! * callback path → the login flow cookie named by the `state` must open and hold that `state`:
//!   then [`Decision::Call`] (the code exchange, PKCE verifier included); anything else 400;
//! * a session cookie that opens and has not expired → [`Decision::Forward`] (`Authorization:
//!   Bearer`, our cookies removed), or a refresh call when the access token expired;
//! * otherwise an API request (XHR, JSON without HTML, CORS fetch) → 401, a browser → 302 to
//!   the authorization endpoint with `state`, `nonce`, PKCE S256, and a login flow cookie.
//!
//! Several tabs log in at once: each login has its own flow cookie, `<name>-flow-<state prefix>`,
//! scoped to the callback path (so it never rides on other requests) and living 10 minutes.

use crate::config::{ClientAuth, Forward, OidcConfig, Provider, SameSite};
use crate::idtoken::{self, constant_time_eq, Expect};
use crate::seal::Keys;
use crate::url;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A login flow cookie lives this long (the time a person has to log in).
pub const FLOW_TTL_SECS: u64 = 600;
/// A cookie value is kept under this many bytes (browsers refuse cookies over 4096 with name and
/// attributes); a larger session is split over several cookies.
pub const CHUNK_BYTES: usize = 3800;
/// Most cookies one session is split into.
pub const MAX_CHUNKS: usize = 4;
/// Largest token endpoint answer read.
pub const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;
/// An access token this close to its expiry is refreshed first (so it does not expire on its way
/// to the upstream).
pub const REFRESH_AHEAD_SECS: u64 = 5;
/// Characters of `state` that name its flow cookie.
const FLOW_ID_CHARS: usize = 12;

/// What the phase needs of a request.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    pub method: &'a str,
    /// `:path`, query included.
    pub path: &'a str,
    /// Every `cookie` header, joined with `; `.
    pub cookie: Option<&'a str>,
    pub accept: Option<&'a str>,
    pub x_requested_with: Option<&'a str>,
    pub sec_fetch_mode: Option<&'a str>,
}

/// A local reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// A call to the provider's token endpoint (through the provider cluster).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenCall {
    pub authority: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// What the phase is waiting for.
#[derive(Debug, Clone, PartialEq)]
pub enum Pending {
    /// The code exchange of a login: the flow it finishes.
    Login { flow: FlowState, flow_cookie: String },
    /// A refresh of this session, for the request that waits.
    Refresh { session: Session, cookie_rest: Option<String> },
}

/// The decision for a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Let it through untouched (bypass path).
    Pass,
    /// Let it through with these request-header changes, and these `Set-Cookie` on the response.
    Forward {
        authorization: String,
        cookie: Option<String>,
        set_cookies: Vec<String>,
        /// Claim headers (`claimHeaders`) to set, from the session's ID token.
        claims: Vec<(String, String)>,
    },
    Reply(Reply),
    /// Call the token endpoint, then [`Oidc::finish`].
    Call {
        call: TokenCall,
        pending: Box<Pending>,
    },
}

/// A login in progress (sealed in its flow cookie).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowState {
    #[serde(rename = "s")]
    pub state: String,
    #[serde(rename = "n")]
    pub nonce: String,
    #[serde(rename = "v")]
    pub verifier: String,
    /// Where to go after login (a local path).
    #[serde(rename = "r")]
    pub return_to: String,
    #[serde(rename = "x")]
    pub expires: u64,
}

/// A session (sealed in the session cookie).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    #[serde(rename = "a")]
    pub access_token: String,
    /// Kept when it is forwarded or needed as the logout `id_token_hint`.
    #[serde(rename = "i", default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// When the access token expires (0: unknown, treated as the session's end).
    #[serde(rename = "e")]
    pub access_expires: u64,
    /// When the session ends (absolute lifetime).
    #[serde(rename = "x")]
    pub expires: u64,
    /// The values of the configured claim headers, in `claimHeaders` order (`None`: the ID
    /// token has no such claim, or it cannot be a header value).
    #[serde(rename = "c", default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<Option<String>>,
}

/// A compiled configuration.
#[derive(Debug, Clone)]
pub struct Oidc {
    pub config: OidcConfig,
    keys: Keys,
    callback_path: String,
    redirect_origin: String,
}

fn reply(status: u32, message: &str) -> Decision {
    Decision::Reply(Reply {
        status,
        headers: vec![
            ("content-type".into(), "text/plain; charset=utf-8".into()),
            ("cache-control".into(), "no-store".into()),
        ],
        body: format!("{message}\n"),
    })
}

fn redirect(location: String, set_cookies: Vec<String>) -> Decision {
    let mut headers = vec![("location".to_string(), location), ("cache-control".into(), "no-store".into())];
    headers.extend(set_cookies.into_iter().map(|c| ("set-cookie".to_string(), c)));
    Decision::Reply(Reply { status: 302, headers, body: String::new() })
}

impl Oidc {
    pub fn new(config: OidcConfig) -> Result<Oidc, String> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let keys = config.keys()?;
        let (_, _, p) = url::split(&config.redirect_uri).ok_or("redirectUri: not an absolute URL")?;
        let callback_path = url::path_only(p).to_string();
        let redirect_origin = url::origin(&config.redirect_uri).unwrap_or_default();
        Ok(Oidc { config, keys, callback_path, redirect_origin })
    }

    pub fn callback_path(&self) -> &str {
        &self.callback_path
    }

    fn session_name(&self) -> &str {
        &self.config.cookie.name
    }

    fn flow_prefix(&self) -> String {
        format!("{}-flow-", self.config.cookie.name)
    }

    /// Whether a cookie is one of ours (session chunks, flow cookies).
    fn ours(&self, name: &str) -> bool {
        let base = self.session_name();
        name == base
            || name.strip_prefix(base).and_then(|r| r.strip_prefix('.')).is_some_and(|n| n.parse::<usize>().is_ok())
            || name.starts_with(&self.flow_prefix())
    }

    fn attributes(&self, path: &str, same_site: SameSite, max_age: Option<u64>) -> String {
        let c = &self.config.cookie;
        let mut a = format!("; Path={path}; HttpOnly");
        if c.secure {
            a.push_str("; Secure");
        }
        a.push_str(match same_site {
            SameSite::Strict => "; SameSite=Strict",
            SameSite::Lax => "; SameSite=Lax",
            SameSite::None => "; SameSite=None",
        });
        if let Some(d) = &c.domain {
            a.push_str(&format!("; Domain={d}"));
        }
        if let Some(m) = max_age {
            a.push_str(&format!("; Max-Age={m}"));
        }
        a
    }

    fn clear(&self, name: &str, path: &str) -> String {
        format!("{name}={}", self.attributes(path, self.config.cookie.same_site, Some(0)))
    }

    /// Whether the request's path is a bypass path (let through without a session).
    pub fn bypassed(&self, req: &Request<'_>) -> bool {
        let path = url::path_only(req.path);
        self.config.bypass_paths.iter().any(|b| path_prefix(path, b))
    }

    /// The decision for one request.
    pub fn decide(&self, provider: &Provider, req: &Request<'_>, now: u64) -> Decision {
        let path = url::path_only(req.path);
        if self.bypassed(req) {
            return Decision::Pass;
        }
        let cookies = cookies(req.cookie);
        if path == self.callback_path {
            return self.callback(provider, req, &cookies, now);
        }
        if path == self.config.logout_path {
            return self.logout(provider, req, &cookies);
        }
        if let Some(session) = self.open_session(&cookies, now) {
            let rest = self.cookie_rest(&cookies);
            if session.access_expires == 0 || session.access_expires > now.saturating_add(REFRESH_AHEAD_SECS) {
                return Decision::Forward {
                    authorization: format!("Bearer {}", self.bearer(&session)),
                    cookie: rest,
                    set_cookies: Vec::new(),
                    claims: self.claim_pairs(&session),
                };
            }
            if let Some(rt) = &session.refresh_token {
                let call = self.token_call(provider, &[("grant_type", "refresh_token"), ("refresh_token", rt)]);
                return match call {
                    Ok(call) => {
                        Decision::Call { call, pending: Box::new(Pending::Refresh { session, cookie_rest: rest }) }
                    }
                    Err(e) => reply(502, e),
                };
            }
        }
        if api_request(req) {
            return Decision::Reply(Reply {
                status: 401,
                headers: vec![
                    ("www-authenticate".into(), "Bearer realm=\"wasmesh\"".into()),
                    ("content-type".into(), "text/plain; charset=utf-8".into()),
                    ("cache-control".into(), "no-store".into()),
                ],
                body: "login required\n".into(),
            });
        }
        self.login(provider, req, now)
    }

    /// The request headers `claimHeaders` names: each is removed from every request first (a
    /// client cannot send its own), then set from the session.
    pub fn claim_header_names(&self) -> impl Iterator<Item = &str> {
        self.config.claim_headers.iter().map(|c| c.header.as_str())
    }

    fn claim_pairs(&self, s: &Session) -> Vec<(String, String)> {
        self.config
            .claim_headers
            .iter()
            .zip(s.claims.iter())
            .filter_map(|(c, v)| v.as_ref().map(|v| (c.header.clone(), v.clone())))
            .collect()
    }

    /// The configured claims of a verified ID token, as header values.
    fn claim_values(&self, jwt: &wasmesh_authn::jwt::Jwt) -> Vec<Option<String>> {
        self.config.claim_headers.iter().map(|c| claim_value(jwt.payload.get(&c.claim))).collect()
    }

    /// Whether the token answer holds an ID token signed with a key the provider's JWKS does
    /// not have (by `kid`/`alg`): the provider may have rotated its keys, the JWKS is worth
    /// fetching again before the login is refused.
    pub fn needs_new_keys(&self, provider: &Provider, status: Option<u32>, body: &[u8]) -> bool {
        let Ok(t) = tokens(status, body) else { return false };
        let Some(id) = t.id_token.as_deref() else { return false };
        match wasmesh_authn::jwt::parse(id, idtoken::MAX_ID_TOKEN_BYTES) {
            Ok(jwt) => !jwt.kid.is_empty() && !provider.keys.has_candidate(&jwt),
            Err(_) => false,
        }
    }

    fn bearer<'s>(&self, s: &'s Session) -> &'s str {
        match self.config.forward {
            Forward::AccessToken => &s.access_token,
            Forward::IdToken => s.id_token.as_deref().unwrap_or(&s.access_token),
        }
    }

    /// The `cookie` header without ours (`None`: nothing left, remove the header).
    fn cookie_rest(&self, cookies: &[(&str, &str)]) -> Option<String> {
        let rest: Vec<String> =
            cookies.iter().filter(|(n, _)| !self.ours(n)).map(|(n, v)| format!("{n}={v}")).collect();
        (!rest.is_empty()).then(|| rest.join("; "))
    }

    /// Starts a login: 302 to the authorization endpoint and a new flow cookie.
    fn login(&self, provider: &Provider, req: &Request<'_>, now: u64) -> Decision {
        let (Ok(state), Ok(nonce), Ok(verifier)) =
            (crate::random_b64(24), crate::random_b64(24), crate::random_b64(32))
        else {
            return reply(500, "login is not available: no entropy");
        };
        // GET requests come back to where they were; anything else to `/` (a form post cannot
        // be replayed after the login round trip).
        let return_to = if req.method == "GET" && url::local_path(req.path) { req.path } else { "/" };
        let flow = FlowState {
            state: state.clone(),
            nonce: nonce.clone(),
            verifier: verifier.clone(),
            return_to: return_to.to_string(),
            expires: now.saturating_add(FLOW_TTL_SECS),
        };
        let name = format!("{}{}", self.flow_prefix(), state.get(..FLOW_ID_CHARS).unwrap_or(&state));
        let Some(value) = serde_json::to_vec(&flow).ok().and_then(|p| self.keys.seal(&name, &p).ok()) else {
            return reply(500, "login is not available: the flow could not be sealed");
        };
        let same_site = if self.config.cookie.same_site == SameSite::None { SameSite::None } else { SameSite::Lax };
        let cookie = format!("{name}={value}{}", self.attributes(&self.callback_path, same_site, Some(FLOW_TTL_SECS)));
        let challenge = crate::b64(&Sha256::digest(verifier.as_bytes()));
        let mut scope = String::from("openid");
        for s in self.config.scopes.iter().filter(|s| *s != "openid") {
            scope.push(' ');
            scope.push_str(s);
        }
        let location = url::with_query(
            &provider.discovery.authorization_endpoint,
            &[
                ("response_type", "code"),
                ("client_id", &self.config.client_id),
                ("redirect_uri", &self.config.redirect_uri),
                ("scope", &scope),
                ("state", &state),
                ("nonce", &nonce),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ],
        );
        redirect(location, vec![cookie])
    }

    /// The callback: the flow cookie the `state` names must open and hold that state.
    fn callback(&self, provider: &Provider, req: &Request<'_>, cookies: &[(&str, &str)], now: u64) -> Decision {
        let params = wasmesh_authn::extract::parse_query(wasmesh_authn::extract::query_of(req.path.as_bytes()), |k| {
            matches!(k, "state" | "code" | "error")
        });
        let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if param("error").is_some() {
            return reply(401, "login failed: the provider refused the login");
        }
        let (Some(state), Some(code)) = (param("state"), param("code")) else {
            return reply(400, "login failed: the callback has no state or no code");
        };
        let name = format!("{}{}", self.flow_prefix(), state.get(..FLOW_ID_CHARS).unwrap_or(state));
        let Some((_, value)) = cookies.iter().find(|(n, _)| *n == name) else {
            return reply(400, "login failed: no login in progress for this state (expired, or another browser)");
        };
        let flow: Option<FlowState> =
            self.keys.open(&name, value).and_then(|plain| serde_json::from_slice(&plain).ok());
        let Some(flow) = flow else {
            return reply(400, "login failed: the login cookie is not valid");
        };
        if !constant_time_eq(flow.state.as_bytes(), state.as_bytes()) {
            return reply(400, "login failed: the state does not match");
        }
        if flow.expires < now {
            return reply(400, "login failed: the login took too long; try again");
        }
        let redirect_uri = self.config.redirect_uri.clone();
        match self.token_call(
            provider,
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &redirect_uri),
                ("code_verifier", &flow.verifier),
            ],
        ) {
            Ok(call) => Decision::Call { call, pending: Box::new(Pending::Login { flow, flow_cookie: name }) },
            Err(e) => reply(502, e),
        }
    }

    fn token_call(&self, provider: &Provider, params: &[(&str, &str)]) -> Result<TokenCall, &'static str> {
        let (_, authority, path) =
            url::split(&provider.discovery.token_endpoint).ok_or("login failed: the token endpoint is not a URL")?;
        let mut pairs: Vec<(&str, &str)> = params.to_vec();
        let mut headers = vec![
            ("content-type".to_string(), "application/x-www-form-urlencoded".to_string()),
            ("accept".to_string(), "application/json".to_string()),
        ];
        match self.config.client_auth {
            ClientAuth::ClientSecretBasic => {
                use base64::Engine;
                // RFC 6749 §2.3.1: each part form-encoded before Basic.
                let user =
                    format!("{}:{}", url::encode(&self.config.client_id), url::encode(&self.config.client_secret));
                let b = base64::engine::general_purpose::STANDARD.encode(user);
                headers.push(("authorization".to_string(), format!("Basic {b}")));
            }
            ClientAuth::ClientSecretPost => {
                pairs.push(("client_id", &self.config.client_id));
                pairs.push(("client_secret", &self.config.client_secret));
            }
        }
        Ok(TokenCall { authority: authority.to_string(), path: path.to_string(), headers, body: url::form(&pairs) })
    }

    /// The token endpoint answered (`status` `None`: no answer, a timeout or reset).
    pub fn finish(
        &self,
        provider: &Provider,
        pending: Pending,
        status: Option<u32>,
        body: &[u8],
        now: u64,
    ) -> Decision {
        match pending {
            Pending::Login { flow, flow_cookie } => {
                let clear_flow = self.clear(&flow_cookie, &self.callback_path);
                let tokens = match tokens(status, body) {
                    Ok(t) => t,
                    Err(e) => return reply(502, &format!("login failed: {e}")),
                };
                let Some(id_token) = tokens.id_token.as_deref() else {
                    return reply(502, "login failed: the provider sent no ID token");
                };
                let expect = Expect {
                    issuer: &self.config.issuer,
                    client_id: &self.config.client_id,
                    nonce: Some(&flow.nonce),
                    now,
                    skew: self.config.clock_skew_seconds,
                };
                let jwt = match idtoken::verify(id_token, &provider.keys, &expect) {
                    Ok(jwt) => jwt,
                    Err(e) => return reply(401, &format!("login failed: {e}")),
                };
                let mut session = self.new_session(&tokens, None, now);
                session.claims = self.claim_values(&jwt);
                match self.session_cookies(&session, now) {
                    Ok(mut set) => {
                        set.push(clear_flow);
                        redirect(flow.return_to, set)
                    }
                    Err(e) => reply(500, e),
                }
            }
            Pending::Refresh { session, cookie_rest } => {
                let tokens = match tokens(status, body) {
                    Ok(t) => t,
                    // A refresh that fails ends the session: the browser logs in again.
                    Err(_) => return redirect_to_login_again(self),
                };
                let mut claims = None;
                if let Some(id) = tokens.id_token.as_deref() {
                    let expect = Expect {
                        issuer: &self.config.issuer,
                        client_id: &self.config.client_id,
                        nonce: None,
                        now,
                        skew: self.config.clock_skew_seconds,
                    };
                    match idtoken::verify(id, &provider.keys, &expect) {
                        Ok(jwt) => claims = Some(self.claim_values(&jwt)),
                        Err(_) => return reply(401, "session refresh failed: the new ID token is not valid"),
                    }
                }
                let mut renewed = self.new_session(&tokens, Some(&session), now);
                renewed.claims = claims.unwrap_or(session.claims);
                match self.session_cookies(&renewed, now) {
                    Ok(set) => Decision::Forward {
                        authorization: format!("Bearer {}", self.bearer(&renewed)),
                        cookie: cookie_rest,
                        set_cookies: set,
                        claims: self.claim_pairs(&renewed),
                    },
                    Err(e) => reply(500, e),
                }
            }
        }
    }

    fn new_session(&self, t: &Tokens, old: Option<&Session>, now: u64) -> Session {
        let keep_id = self.config.forward == Forward::IdToken || provider_logout_needs_hint();
        let access_expires = t.expires_in.map_or(0, |e| now.saturating_add(e));
        Session {
            access_token: t.access_token.clone(),
            id_token: if keep_id { t.id_token.clone().or_else(|| old.and_then(|o| o.id_token.clone())) } else { None },
            // A refresh answer without a refresh token keeps the old one (as authservice).
            refresh_token: t.refresh_token.clone().or_else(|| old.and_then(|o| o.refresh_token.clone())),
            access_expires,
            expires: old.map_or(now.saturating_add(self.config.cookie.lifetime_seconds), |o| o.expires),
            claims: Vec::new(),
        }
    }

    /// `Set-Cookie` values for a session: one cookie, or `name` = `<n>~<first chunk>` and
    /// `name.1` … `name.<n-1>`; the session lives as long as its lifetime.
    pub fn session_cookies(&self, s: &Session, now: u64) -> Result<Vec<String>, &'static str> {
        let plain = serde_json::to_vec(s).map_err(|_| "the session could not be encoded")?;
        let name = self.session_name();
        let sealed = self.keys.seal(name, &plain)?;
        let max_age = Some(s.expires.saturating_sub(now));
        let attrs = self.attributes(&self.config.cookie.path, self.config.cookie.same_site, max_age);
        let chunks: Vec<&str> = chunks(&sealed, CHUNK_BYTES);
        if chunks.len() > MAX_CHUNKS {
            return Err("login failed: the tokens are too large for the session cookies");
        }
        let mut out = Vec::with_capacity(MAX_CHUNKS);
        for (i, c) in chunks.iter().enumerate() {
            if i == 0 {
                let v = if chunks.len() == 1 { (*c).to_string() } else { format!("{}~{c}", chunks.len()) };
                out.push(format!("{name}={v}{attrs}"));
            } else {
                out.push(format!("{name}.{i}={c}{attrs}"));
            }
        }
        // Chunks a larger earlier session may have left.
        for i in chunks.len().max(1)..MAX_CHUNKS {
            out.push(self.clear(&format!("{name}.{i}"), &self.config.cookie.path));
        }
        Ok(out)
    }

    /// The session in the request's cookies, when it opens and has not expired.
    pub fn open_session(&self, cookies: &[(&str, &str)], now: u64) -> Option<Session> {
        let name = self.session_name();
        let first = cookies.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)?;
        let sealed = match first.split_once('~') {
            None => first.to_string(),
            Some((count, head)) => {
                let n: usize = count.parse().ok().filter(|n| (2..=MAX_CHUNKS).contains(n))?;
                let mut all = head.to_string();
                for i in 1..n {
                    let part = format!("{name}.{i}");
                    all.push_str(cookies.iter().find(|(k, _)| *k == part).map(|(_, v)| *v)?);
                }
                all
            }
        };
        let s: Session = serde_json::from_slice(&self.keys.open(name, &sealed)?).ok()?;
        (s.expires > now).then_some(s)
    }

    fn logout(&self, provider: &Provider, req: &Request<'_>, cookies: &[(&str, &str)]) -> Decision {
        let params = wasmesh_authn::extract::parse_query(wasmesh_authn::extract::query_of(req.path.as_bytes()), |k| {
            k == "return_to"
        });
        let return_to = match params.first() {
            None => None,
            Some((_, target)) => match url::return_target(target, &self.config.allowed_return_origins) {
                Some(t) => Some(t),
                None => return reply(400, "logout refused: return_to leaves the allowed origins"),
            },
        };
        let name = self.session_name();
        let mut set = vec![self.clear(name, &self.config.cookie.path)];
        for i in 1..MAX_CHUNKS {
            if cookies.iter().any(|(n, _)| *n == format!("{name}.{i}")) {
                set.push(self.clear(&format!("{name}.{i}"), &self.config.cookie.path));
            }
        }
        let session = self.open_session(cookies, 0);
        match &provider.discovery.end_session_endpoint {
            // RP-initiated logout: the provider ends its session too, then sends the browser to
            // the configured post-logout URI.
            Some(end) => {
                let mut q: Vec<(&str, &str)> = vec![("client_id", &self.config.client_id)];
                if let Some(id) = session.as_ref().and_then(|s| s.id_token.as_deref()) {
                    q.push(("id_token_hint", id));
                }
                if let Some(after) = &self.config.post_logout_redirect_uri {
                    q.push(("post_logout_redirect_uri", after));
                }
                redirect(url::with_query(end, &q), set)
            }
            None => redirect(return_to.unwrap_or_else(|| "/".into()), set),
        }
    }

    /// The origin of the redirect URI (the gateway as the browser sees it).
    pub fn redirect_origin(&self) -> &str {
        &self.redirect_origin
    }
}

/// The ID token is kept in the session for RP-initiated logout (`id_token_hint`).
fn provider_logout_needs_hint() -> bool {
    true
}

/// A refresh that failed: the session is cleared and the browser sent to `/`, where it logs in
/// again.
fn redirect_to_login_again(o: &Oidc) -> Decision {
    redirect("/".into(), vec![o.clear(o.session_name(), &o.config.cookie.path)])
}

/// A claim as a header value: strings as they are, numbers and booleans as JSON, arrays of those
/// joined with `,`; anything else, anything with control characters or longer than
/// [`MAX_CLAIM_VALUE`](crate::config::MAX_CLAIM_VALUE): not sent.
fn claim_value(v: Option<&serde_json::Value>) -> Option<String> {
    use serde_json::Value;
    fn scalar(v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    let text = match v? {
        Value::Array(items) => items.iter().map(scalar).collect::<Option<Vec<_>>>()?.join(","),
        other => scalar(other)?,
    };
    let ok = text.len() <= crate::config::MAX_CLAIM_VALUE && text.chars().all(|c| !c.is_control());
    ok.then_some(text)
}

fn chunks(s: &str, n: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (a, b) = rest.split_at(rest.len().min(n));
        out.push(a);
        rest = b;
    }
    out
}

/// The token endpoint's answer.
#[derive(Debug, Deserialize)]
struct Tokens {
    access_token: String,
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    token_type: Option<String>,
}

fn tokens(status: Option<u32>, body: &[u8]) -> Result<Tokens, &'static str> {
    match status {
        None => return Err("the provider's token endpoint did not answer"),
        Some(200) => {}
        // Envoy's own answers when the call timed out or the provider could not be reached.
        Some(502..=504) => return Err("the provider's token endpoint did not answer in time or could not be reached"),
        Some(_) => return Err("the provider's token endpoint refused the request"),
    }
    if body.len() > MAX_TOKEN_RESPONSE_BYTES {
        return Err("the provider's token answer is too large");
    }
    let t: Tokens = serde_json::from_slice(body).map_err(|_| "the provider's token answer is not valid")?;
    if t.token_type.as_deref().is_some_and(|tt| !tt.eq_ignore_ascii_case("bearer")) {
        return Err("the provider's token is not a bearer token");
    }
    if t.access_token.is_empty() || t.access_token.chars().any(|c| !c.is_ascii_graphic()) {
        return Err("the provider's access token is not valid");
    }
    Ok(t)
}

/// `path` is `prefix` or below it.
fn path_prefix(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'))
}

/// An API call, not a page load: it gets 401, not a redirect it cannot follow.
fn api_request(req: &Request<'_>) -> bool {
    if req.x_requested_with.is_some_and(|x| x.eq_ignore_ascii_case("XMLHttpRequest")) {
        return true;
    }
    if req.sec_fetch_mode.is_some_and(|m| m == "cors" || m == "same-origin" || m == "no-cors") {
        return true;
    }
    if req.method != "GET" && req.method != "HEAD" {
        return true;
    }
    let accept = req.accept.unwrap_or("");
    accept.contains("application/json") && !accept.contains("text/html")
}

/// Cookies of the request, in order (a name seen twice: the first wins when looked up).
fn cookies(header: Option<&str>) -> Vec<(&str, &str)> {
    let Some(h) = header else { return Vec::new() };
    h.split(';')
        .filter_map(|part| {
            let (n, v) = part.trim().split_once('=')?;
            let n = n.trim();
            (!n.is_empty()).then(|| (n, v.trim().trim_matches('"')))
        })
        .collect()
}

#[cfg(test)]
#[path = "flow_tests.rs"]
mod tests;
