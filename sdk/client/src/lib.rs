//! wisp-client owns talking to the Wisp API over HTTP: typed and dynamic CRUD, raw watch
//! streams and a resumable watch (reconnects from the last seen resourceVersion, re-lists
//! on 410 Gone), blobs, tokens, and the CLI config file (`~/.wisp/config`).
//!
//! It must not cache objects or run control loops (that is `wisp-runtime`).

pub mod config;
pub mod watch;

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use http::{Method, Request, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;
use wisp_api::{DynamicObject, KindInfo, List, Resource, Status, WatchEvent};

pub use config::Config;
pub use watch::{WatchParams, Watcher, WatcherEvent};

/// Every client failure. Each keeps the error that caused it as its source (print the chain
/// to see it).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error `Status` (its message names the problem).
    #[error("{}", .0.message)]
    Api(Box<Status>),
    /// The request or its answer did not get through (connecting, or reading the body).
    #[error("cannot reach the Wisp API at {url}")]
    Connect {
        url: String,
        #[source]
        source: BoxError,
    },
    /// An answer (or a request body) that is not what it should be: `what` says which.
    #[error("bad response from the server: {what}")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// The config file cannot be read or written.
    #[error("{what}")]
    Config {
        what: String,
        #[source]
        source: BoxError,
    },
}

impl ClientError {
    /// The HTTP status code of an API error.
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Api(s) => Some(s.code),
            _ => None,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Query parameters of list and watch.
#[derive(Clone, Debug, Default)]
pub struct ListParams {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
}

impl ListParams {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(l) = &self.label_selector {
            q.push(("labelSelector", l.clone()));
        }
        if let Some(f) = &self.field_selector {
            q.push(("fieldSelector", f.clone()));
        }
        q
    }
}

/// `pairs` as a query string (`application/x-www-form-urlencoded`, as the server decodes it).
fn encode_query(pairs: &[(&str, String)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Any error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error while reading a response body: the connection broke, or the server's stream failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(pub BoxError);

/// A response's body, whichever way the request went.
pub type Body = UnsyncBoxBody<Bytes, BodyError>;

/// Answers a request in this process (see [`Client::in_process`]).
type LocalHandler =
    Arc<dyn Fn(Request<Full<Bytes>>) -> BoxFuture<'static, http::Response<Body>> + Send + Sync>;

#[derive(Clone)]
enum Transport {
    Http(Arc<HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>>),
    InProcess(LocalHandler),
}

/// A connector for a node's agent (`Node.status.agentUrl`): HTTPS only, HTTP/1.1, whose
/// certificate must chain to that node's own CA (`Node.status.agentCa`, PEM) — trusted for
/// that node only, never for another node or the API server.
pub type NodeConnector = hyper_rustls::HttpsConnector<HttpConnector>;

/// See [`NodeConnector`].
pub fn node_connector(agent_ca: &str) -> Result<NodeConnector> {
    let tls = wisp_tls::client_config(Some(agent_ca)).map_err(|e| ClientError::Config {
        what: "the node's CA (status.agentCa) is not usable".into(),
        source: e.into(),
    })?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.enforce_http(false);
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(connector))
}

/// The cluster CA of `server` (an `https://` URL), read from its TLS handshake and returned
/// (PEM) only if its fingerprint is `ca_hash` (`sha256:<hex>`, as `wisp up` prints it): how a
/// node joins with `--ca-cert-hash` instead of a CA file. Nothing is sent on that connection;
/// the caller then connects again verifying the server against the CA returned.
pub async fn discover_ca(server: &str, ca_hash: &str) -> Result<String> {
    let fail = |what: String, source: BoxError| ClientError::Config { what, source };
    let uri: http::Uri = server
        .parse()
        .map_err(|e| fail(format!("{server} is not a URL"), Box::new(e)))?;
    if uri.scheme() != Some(&http::uri::Scheme::HTTPS) {
        return Err(fail(
            format!("a CA is read only from an https:// server, not {server}"),
            "plain HTTP has no certificate".into(),
        ));
    }
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let name = wisp_tls::rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| fail(format!("{server}: {host:?} is not a server name"), Box::new(e)))?;
    let read = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        tokio_rustls::TlsConnector::from(Arc::new(wisp_tls::chain_reading_config()))
            .connect(name, tcp)
            .await
    };
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, read)
        .await
        .map_err(|_| {
            fail(
                format!("cannot read the CA of {server}"),
                format!("no TLS handshake within {CONNECT_TIMEOUT:?}").into(),
            )
        })?
        .map_err(|e| fail(format!("cannot read the CA of {server}"), Box::new(e)))?;
    let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
    // What the server showed is not printed: it may be an impostor, and its fingerprints
    // are no hash to retry with.
    wisp_tls::pinned_in_chain(chain, ca_hash).ok_or_else(|| {
        fail(
            format!("{server} shows no certificate with fingerprint {ca_hash}"),
            "check the hash `wisp up` or `wisp server` printed where it runs, or join with --ca-file".into(),
        )
    })
}

/// The address an `http://ip:port` or `https://ip:port` URL names (its port, else the
/// scheme's), when its host is an IP address.
pub fn url_addr(url: &str) -> Option<std::net::SocketAddr> {
    let uri: http::Uri = url.parse().ok()?;
    let ip = uri
        .host()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    let default = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
        443
    } else {
        80
    };
    Some(std::net::SocketAddr::new(ip, uri.port_u16().unwrap_or(default)))
}

/// Where `node`'s port is, as the node reports it (`status.agentUrl`, `status.agentCa`) —
/// checked the same way by everyone who calls a node (the API server's log proxy, the
/// autoscaler, other nodes' ingresses): an `https://` URL of which only the host and port
/// count, an IP address among the node's own `status.addresses` that is not unspecified,
/// link-local (cloud metadata) or multicast, and its CA (one certificate). The address and
/// the CA, or why not.
pub fn node_port(node: &wisp_api::Node) -> std::result::Result<(std::net::SocketAddr, &str), String> {
    let st = node.status.as_ref().ok_or("it reports no status")?;
    let url = st.agent_url.as_deref().ok_or("it publishes no agent URL")?;
    let ca = st
        .agent_ca
        .as_deref()
        .ok_or("it publishes no CA for its agent (status.agentCa): it is reached over TLS only")?;
    if ca.len() > wisp_api::AGENT_CA_MAX || !wisp_tls::is_node_ca(ca) {
        return Err("its status.agentCa is not a node's own CA (one certificate, wisp node CA)".into());
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("agent URL {url:?} is not a URL"))?;
    if uri.scheme() != Some(&http::uri::Scheme::HTTPS) {
        return Err(format!("agent URL {url:?} is not https://"));
    }
    let ip: std::net::IpAddr = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| format!("agent URL {url:?} does not name an IP address"))?;
    if !st
        .addresses
        .iter()
        .any(|a| a.address.parse::<std::net::IpAddr>().ok() == Some(ip))
    {
        return Err(format!("agent URL {url:?} is not at one of the node's addresses"));
    }
    // IPv6 forms of IPv4 addresses count as those (the sandbox's egress rules); AWS's IPv6
    // metadata address is in a private range, which nodes' networks may use otherwise.
    let aws_metadata = std::net::IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254));
    if ip == aws_metadata
        || matches!(
            wisp_sandbox::egress::restricted_class(ip),
            Some("link-local" | "unspecified" | "multicast or reserved")
        )
    {
        return Err(format!("agent URL {url:?} is at an address no agent listens on"));
    }
    Ok((std::net::SocketAddr::new(ip, uri.port_u16().unwrap_or(443)), ca))
}

/// A connection to one Wisp API server. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    transport: Transport,
}

/// How long a connection to the API server may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Client {
    /// A client for `server` (e.g. `https://127.0.0.1:7700`) using bearer `token`; over
    /// HTTPS it trusts the public web's roots (see [`Client::with_ca`] for a cluster's own
    /// CA).
    pub fn new(server: &str, token: &str) -> Self {
        Self::over(server, token, wisp_tls::web_client_config())
    }

    /// A client for `server` whose certificate must chain to the CA in `ca_pem` (PEM) — or,
    /// without one, to the public web's roots.
    pub fn with_ca(server: &str, token: &str, ca_pem: Option<&str>) -> Result<Self> {
        let tls = wisp_tls::client_config(ca_pem).map_err(|e| ClientError::Config {
            what: "cannot use the certificate authority".into(),
            source: e.into(),
        })?;
        Ok(Self::over(server, token, tls))
    }

    fn over(server: &str, token: &str, tls: wisp_tls::rustls::ClientConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // A server that does not answer (a wrong address, a dropped packet) fails in seconds
        // with the address tried, not after the operating system's minutes.
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.enforce_http(false);
        // `http://` stays plain (a server started with --insecure-http); `https://` must
        // verify against `tls`'s roots.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self {
            base: server.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            transport: Transport::Http(Arc::new(http)),
        }
    }

    /// A client whose requests `handler` answers in this process: an API server sharing the
    /// process with its client (`wisp up`: `wisp_apiserver::ApiServer::handle_in_process`),
    /// called without a socket. It gets each request exactly as it would over HTTP (token,
    /// path, body), so authentication, validation and compare-and-swap all apply. `server`
    /// is still the server's address for those who need one (e.g. to hand to another
    /// process).
    pub fn in_process<F, Fut, B>(server: &str, token: &str, handler: F) -> Self
    where
        F: Fn(Request<Full<Bytes>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = http::Response<B>> + Send + 'static,
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let handler: LocalHandler = Arc::new(move |req| {
            let resp = handler(req);
            Box::pin(async move {
                resp.await
                    .map(|b| b.map_err(|e| BodyError(e.into())).boxed_unsync())
            })
        });
        Self {
            base: server.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            transport: Transport::InProcess(handler),
        }
    }

    pub fn from_config(config: &Config) -> Result<Self> {
        Self::with_ca(&config.server, &config.token, config.ca.as_deref())
    }

    pub fn server(&self) -> &str {
        &self.base
    }

    /// The bearer token this client sends (for a component that must show it elsewhere: the
    /// autoscaler to a node's ingress).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The same server and transport with another token (to ask the API who a token is).
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            base: self.base.clone(),
            token: token.to_owned(),
            transport: self.transport.clone(),
        }
    }

    /// Send a request; non-2xx answers become [`ClientError::Api`].
    pub async fn raw(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Bytes>,
    ) -> Result<http::Response<Body>> {
        let url = format!("{}{path_and_query}", self.base);
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| ClientError::Connect {
                url: url.clone(),
                source: e.into(),
            })?;
        let resp = match &self.transport {
            Transport::Http(http) => http
                .request(req)
                .await
                .map_err(|e| ClientError::Connect {
                    url: self.base.clone(),
                    source: e.into(),
                })?
                .map(|b| b.map_err(|e| BodyError(e.into())).boxed_unsync()),
            Transport::InProcess(handler) => handler(req).await,
        };
        if resp.status().is_success() {
            return Ok(resp);
        }
        let code = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Err(ClientError::Api(Box::new(status_of(code, &bytes))))
    }

    async fn send<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<Bytes>) -> Result<T> {
        let resp = self.raw(method, path, body).await?;
        let bytes = self.body(resp).await?;
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            what: format!("answer to {path}"),
            source,
        })
    }

    /// A whole response body; a body that breaks off is a connection failure.
    async fn body(&self, resp: http::Response<Body>) -> Result<Bytes> {
        Ok(resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Connect {
                url: self.base.clone(),
                source: e.into(),
            })?
            .to_bytes())
    }

    /// The path of a collection (`name == None`) or one object.
    pub fn path(kind: &KindInfo, namespace: Option<&str>, name: Option<&str>) -> String {
        let mut p = match (kind.namespaced, namespace) {
            (true, Some(ns)) => format!("/apis/wisp.dev/v1/namespaces/{ns}/{}", kind.plural),
            _ => format!("/apis/wisp.dev/v1/{}", kind.plural),
        };
        if let Some(n) = name {
            p.push('/');
            p.push_str(n);
        }
        p
    }

    pub async fn get_dyn(&self, kind: &KindInfo, ns: Option<&str>, name: &str) -> Result<DynamicObject> {
        self.send(Method::GET, &Self::path(kind, ns, Some(name)), None)
            .await
    }

    pub async fn list_dyn(
        &self,
        kind: &KindInfo,
        ns: Option<&str>,
        params: &ListParams,
    ) -> Result<List<DynamicObject>> {
        let q = encode_query(&params.query());
        self.send(Method::GET, &format!("{}?{q}", Self::path(kind, ns, None)), None)
            .await
    }

    /// Every object of a kind, read `page` at a time (`limit` / `continue`).
    pub async fn list_dyn_all(
        &self,
        kind: &KindInfo,
        ns: Option<&str>,
        params: &ListParams,
        page: usize,
    ) -> Result<List<DynamicObject>> {
        let path = Self::path(kind, ns, None);
        let mut all: Option<List<DynamicObject>> = None;
        let mut next: Option<String> = None;
        loop {
            let mut q = params.query();
            q.push(("limit", page.to_string()));
            if let Some(c) = &next {
                q.push(("continue", c.clone()));
            }
            let mut list: List<DynamicObject> = self
                .send(Method::GET, &format!("{path}?{}", encode_query(&q)), None)
                .await?;
            next = list.metadata.continue_.take();
            match &mut all {
                None => all = Some(list),
                Some(a) => a.items.append(&mut list.items),
            }
            if next.is_none() {
                break;
            }
        }
        let mut all = all.unwrap_or_else(|| List {
            api_version: wisp_api::API_VERSION.into(),
            kind: format!("{}List", kind.kind),
            metadata: wisp_api::ListMeta::default(),
            items: Vec::new(),
        });
        all.metadata.remaining_item_count = None;
        Ok(all)
    }

    pub async fn create_dyn(
        &self,
        kind: &KindInfo,
        ns: Option<&str>,
        obj: &impl Serialize,
    ) -> Result<DynamicObject> {
        let body = to_body(obj)?;
        self.send(Method::POST, &Self::path(kind, ns, None), Some(body))
            .await
    }

    pub async fn replace_dyn(
        &self,
        kind: &KindInfo,
        ns: Option<&str>,
        name: &str,
        obj: &impl Serialize,
    ) -> Result<DynamicObject> {
        self.send(
            Method::PUT,
            &Self::path(kind, ns, Some(name)),
            Some(to_body(obj)?),
        )
        .await
    }

    pub async fn replace_status_dyn(
        &self,
        kind: &KindInfo,
        ns: Option<&str>,
        name: &str,
        obj: &impl Serialize,
    ) -> Result<DynamicObject> {
        let path = format!("{}/status", Self::path(kind, ns, Some(name)));
        self.send(Method::PUT, &path, Some(to_body(obj)?)).await
    }

    pub async fn delete_dyn(&self, kind: &KindInfo, ns: Option<&str>, name: &str) -> Result<DynamicObject> {
        self.send(Method::DELETE, &Self::path(kind, ns, Some(name)), None)
            .await
    }

    /// One watch request: events after `resource_version` (`None`: current state first).
    /// Ends when the server closes the stream.
    pub async fn watch_dyn(
        &self,
        kind: &KindInfo,
        ns: Option<&str>,
        params: &ListParams,
        resource_version: Option<&str>,
    ) -> Result<BoxStream<'static, Result<WatchEvent<DynamicObject>>>> {
        self.watch_as(kind, ns, params, resource_version).await
    }

    async fn watch_as<O: DeserializeOwned + Send + 'static>(
        &self,
        kind: &KindInfo,
        ns: Option<&str>,
        params: &ListParams,
        resource_version: Option<&str>,
    ) -> Result<BoxStream<'static, Result<WatchEvent<O>>>> {
        let mut q = params.query();
        q.push(("watch", "true".into()));
        if let Some(rv) = resource_version {
            q.push(("resourceVersion", rv.to_owned()));
        }
        let path = format!("{}?{}", Self::path(kind, ns, None), encode_query(&q));
        let resp = self.raw(Method::GET, &path, None).await?;
        Ok(lines(resp.into_body()).boxed())
    }

    /// Typed access to one kind in one namespace (`None`: cluster-scoped or all namespaces).
    pub fn api<T: Resource>(&self, namespace: Option<&str>) -> Api<T> {
        Api {
            client: self.clone(),
            namespace: namespace.map(str::to_owned),
            _t: PhantomData,
        }
    }

    /// Upload a blob; returns its `sha256:<hex>` digest.
    pub async fn put_blob(&self, data: Bytes) -> Result<String> {
        use sha2::Digest;
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&data)));
        self.raw(Method::PUT, &format!("/blobs/{digest}"), Some(data))
            .await?;
        Ok(digest)
    }

    /// Whether the server has blob `digest` and this token may read it (so an upload can be
    /// skipped). A tenant's "no" is the same whether another namespace has it or nobody does.
    pub async fn has_blob(&self, digest: &str) -> Result<bool> {
        match self.raw(Method::HEAD, &format!("/blobs/{digest}"), None).await {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.code(), Some(403 | 404)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn get_blob(&self, digest: &str) -> Result<Bytes> {
        let resp = self.raw(Method::GET, &format!("/blobs/{digest}"), None).await?;
        self.body(resp).await
    }

    /// Mint a token confined to `namespace` (admin only).
    pub async fn create_token(&self, namespace: &str) -> Result<String> {
        let req = TokenRequest {
            namespace: Some(namespace.to_owned()),
            ..TokenRequest::default()
        };
        Ok(self.issue_token(&req).await?.token)
    }

    /// Mint a token (admin only): confined to a namespace, a node's credential, or (neither)
    /// another admin token; expiring after `ttl_seconds` when set.
    pub async fn issue_token(&self, req: &TokenRequest) -> Result<IssuedToken> {
        let body = to_body(req)?;
        self.send(Method::POST, "/apis/wisp.dev/v1/tokens", Some(body))
            .await
    }

    /// Every stored token (admin only; never the tokens themselves).
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>> {
        #[derive(serde::Deserialize)]
        struct Items {
            items: Vec<TokenInfo>,
        }
        let items: Items = self.send(Method::GET, "/apis/wisp.dev/v1/tokens", None).await?;
        Ok(items.items)
    }

    /// Revoke the token with this id (a prefix of its digest, as `list_tokens` shows).
    pub async fn revoke_token(&self, id: &str) -> Result<TokenInfo> {
        self.send(Method::DELETE, &format!("/apis/wisp.dev/v1/tokens/{id}"), None)
            .await
    }

    /// Who this client's token speaks for.
    pub async fn whoami(&self) -> Result<WhoAmI> {
        self.send(Method::GET, "/apis/wisp.dev/v1/whoami", None).await
    }

    /// The pods' resource usage (of `namespace`, or of all), from the metrics API.
    pub async fn pod_usage(&self, namespace: Option<&str>) -> Result<wisp_api::usage::PodUsageList> {
        let path = match namespace {
            Some(ns) => format!("/apis/metrics.wisp.dev/v1/namespaces/{ns}/pods"),
            None => "/apis/metrics.wisp.dev/v1/pods".to_owned(),
        };
        self.send(Method::GET, &path, None).await
    }

    /// The nodes' resource usage, from the metrics API.
    pub async fn node_usage(&self) -> Result<wisp_api::usage::NodeUsageList> {
        self.send(Method::GET, "/apis/metrics.wisp.dev/v1/nodes", None)
            .await
    }
}

/// What a new token may do (admin only): at most one of `namespace` and `node`.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

/// A stored token as the API lists it.
#[derive(Clone, Debug, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub id: String,
    pub kind: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// A token just minted (shown once) and its record.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct IssuedToken {
    pub token: String,
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// Who a token speaks for.
#[derive(Clone, Debug, serde::Deserialize, PartialEq, Eq)]
pub struct WhoAmI {
    /// `admin`, `namespace`, `node`, `scraper` (reads ingress statistics) or `podLogs` (a
    /// ticket the API server mints to read one pod's logs from its agent).
    pub kind: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub pod: Option<String>,
    /// Whom a `podLogs` ticket reads for: the caller the API server authorized.
    #[serde(default, rename = "onBehalfOf")]
    pub on_behalf_of: Option<String>,
}

fn to_body(obj: &impl Serialize) -> Result<Bytes> {
    serde_json::to_vec(obj)
        .map(Bytes::from)
        .map_err(|source| ClientError::Decode {
            what: "request body".into(),
            source,
        })
}

fn status_of(code: StatusCode, body: &[u8]) -> Status {
    serde_json::from_slice::<Status>(body).unwrap_or_else(|_| {
        Status::failure(
            code.as_u16(),
            "Unknown",
            format!("{code}: {}", String::from_utf8_lossy(body)),
        )
    })
}

/// Split a streaming body into newline-delimited JSON watch events.
fn lines<O: DeserializeOwned + Send + 'static>(
    body: Body,
) -> impl Stream<Item = Result<WatchEvent<O>>> + Send {
    futures::stream::unfold(
        (body, Vec::<u8>::new(), false),
        |(mut body, mut buf, done)| async move {
            loop {
                if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return Some((decode_event(&line), (body, buf, done)));
                }
                if done {
                    return None;
                }
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            buf.extend_from_slice(&data);
                        }
                    }
                    Some(Err(e)) => {
                        // The connection broke: retryable, unlike an undecodable event.
                        let err = ClientError::Connect {
                            url: "watch stream".into(),
                            source: e.into(),
                        };
                        return Some((Err(err), (body, buf, true)));
                    }
                    None => return None,
                }
            }
        },
    )
}

/// One watch line, its object decoded straight into `O`; an `ERROR` event (its object is a
/// Status) becomes the API error it carries.
fn decode_event<O: DeserializeOwned>(line: &[u8]) -> Result<WatchEvent<O>> {
    if let Ok(ev) = serde_json::from_slice::<WatchEvent<O>>(line)
        && ev.type_ != wisp_api::EventType::Error
    {
        return Ok(ev);
    }
    // An error event, or a line that is not an event of `O`: say which.
    let decode = |what: &str| {
        let what = what.to_owned();
        move |source| ClientError::Decode { what, source }
    };
    let ev = serde_json::from_slice::<WatchEvent<serde_json::Value>>(line).map_err(decode("watch event"))?;
    if ev.type_ == wisp_api::EventType::Error {
        let status: Status = serde_json::from_value(ev.object).map_err(decode("watch error event"))?;
        return Err(ClientError::Api(Box::new(status)));
    }
    let object = serde_json::from_value(ev.object).map_err(decode("watch object"))?;
    Ok(WatchEvent {
        type_: ev.type_,
        object,
    })
}

/// Typed API of one kind.
#[derive(Clone)]
pub struct Api<T> {
    client: Client,
    namespace: Option<String>,
    _t: PhantomData<fn() -> T>,
}

fn info<T: Resource>() -> &'static KindInfo {
    wisp_api::kind_by_plural(T::PLURAL).unwrap_or(&wisp_api::KINDS[0])
}

/// A decode error names the kind it was decoding.
fn of_kind<T: Resource, O>(r: Result<O>) -> Result<O> {
    r.map_err(|e| match e {
        ClientError::Decode { what, source } => ClientError::Decode {
            what: format!("{}: {what}", T::KIND),
            source,
        },
        e => e,
    })
}

impl<T: Resource> Api<T> {
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// One object of this kind (`name`) or the collection's path.
    fn path(&self, name: Option<&str>) -> String {
        Client::path(info::<T>(), self.namespace.as_deref(), name)
    }

    /// A request whose answer is decoded straight into `O` (not into a `DynamicObject` and
    /// converted); a decode error names the kind.
    async fn send<O: DeserializeOwned>(&self, method: Method, path: &str, body: Option<&T>) -> Result<O> {
        let body = body.map(to_body).transpose();
        of_kind::<T, _>(match body {
            Ok(body) => self.client.send(method, path, body).await,
            Err(e) => Err(e),
        })
    }

    pub async fn get(&self, name: &str) -> Result<T> {
        self.send(Method::GET, &self.path(Some(name)), None).await
    }

    /// `Ok(None)` on 404.
    pub async fn get_opt(&self, name: &str) -> Result<Option<T>> {
        match self.get(name).await {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.code() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn list(&self, params: &ListParams) -> Result<List<T>> {
        let q = encode_query(&params.query());
        self.send(Method::GET, &format!("{}?{q}", self.path(None)), None)
            .await
    }

    /// One page of at most `limit` items, after the page `continue_` names (`None`: the
    /// first); the list's `metadata.continue` names the next page, if any.
    pub async fn list_page(
        &self,
        params: &ListParams,
        limit: usize,
        continue_: Option<&str>,
    ) -> Result<List<T>> {
        let mut q = params.query();
        q.push(("limit", limit.to_string()));
        if let Some(c) = continue_ {
            q.push(("continue", c.to_owned()));
        }
        let q = encode_query(&q);
        self.send(Method::GET, &format!("{}?{q}", self.path(None)), None)
            .await
    }

    /// Every item, read `page` at a time.
    pub async fn list_all(&self, params: &ListParams, page: usize) -> Result<List<T>> {
        let mut first = self.list_page(params, page, None).await?;
        let mut next = first.metadata.continue_.take();
        while let Some(c) = next {
            let mut more = self.list_page(params, page, Some(&c)).await?;
            next = more.metadata.continue_.take();
            first.items.append(&mut more.items);
        }
        first.metadata.remaining_item_count = None;
        Ok(first)
    }

    pub async fn create(&self, obj: &T) -> Result<T> {
        self.send(Method::POST, &self.path(None), Some(obj)).await
    }

    pub async fn replace(&self, obj: &T) -> Result<T> {
        self.send(Method::PUT, &self.path(Some(&obj.metadata().name)), Some(obj))
            .await
    }

    pub async fn replace_status(&self, obj: &T) -> Result<T> {
        let path = format!("{}/status", self.path(Some(&obj.metadata().name)));
        self.send(Method::PUT, &path, Some(obj)).await
    }

    pub async fn delete(&self, name: &str) -> Result<T> {
        self.send(Method::DELETE, &self.path(Some(name)), None).await
    }

    /// Deletes `name` only while it is at `resource_version` (409 Conflict once it changed).
    pub async fn delete_at(&self, name: &str, resource_version: &str) -> Result<T> {
        let path = format!("{}?resourceVersion={resource_version}", self.path(Some(name)));
        self.send(Method::DELETE, &path, None).await
    }

    /// One raw watch request (see [`Client::watch_dyn`]).
    pub async fn watch(
        &self,
        params: &ListParams,
        resource_version: Option<&str>,
    ) -> Result<BoxStream<'static, Result<WatchEvent<T>>>> {
        let s = self
            .client
            .watch_as::<T>(info::<T>(), self.namespace.as_deref(), params, resource_version)
            .await?;
        Ok(s.map(of_kind::<T, _>).boxed())
    }

    /// A watch that survives disconnects and compaction (see [`Watcher`]).
    pub fn watcher(&self, params: WatchParams) -> Watcher<T> {
        Watcher::new(self.clone(), params)
    }
}

#[cfg(test)]
mod tests {
    use wisp_api::{ConfigMap, EventType, ObjectMeta, Resource};

    use super::*;

    /// What a node writes decides where others call it, so each part is checked: the scheme,
    /// an IP address of the node's own, no metadata or unspecified address, one CA.
    #[test]
    fn a_nodes_port_is_https_at_its_own_address_with_one_ca() {
        let ca = wisp_tls::Ca::create_named(wisp_tls::NODE_CA)
            .expect("ca")
            .cert_pem()
            .to_owned();
        let node = |url: &str, addresses: &[&str], ca: Option<&str>| {
            let mut n = wisp_api::Node::new(ObjectMeta::named("n"));
            n.status = Some(wisp_api::NodeStatus {
                addresses: addresses
                    .iter()
                    .map(|a| wisp_api::NodeAddress {
                        type_: "InternalIP".into(),
                        address: (*a).into(),
                    })
                    .collect(),
                agent_url: Some(url.into()),
                agent_ca: ca.map(str::to_owned),
                ..wisp_api::NodeStatus::default()
            });
            n
        };
        let good = node("https://10.0.0.5:10250/ignored?x=1", &["10.0.0.5"], Some(&ca));
        assert_eq!(
            node_port(&good).expect("good"),
            ("10.0.0.5:10250".parse().expect("addr"), ca.as_str()),
            "host and port only"
        );
        let v6 = node("https://[fd00::5]:7", &["fd00::5"], Some(&ca));
        assert_eq!(
            node_port(&v6).expect("v6").0,
            "[fd00::5]:7".parse().expect("addr")
        );
        let two = format!("{ca}{ca}");
        let cluster = wisp_tls::Ca::create().expect("ca").cert_pem().to_owned();
        for (n, why) in [
            (
                node("http://10.0.0.5:1", &["10.0.0.5"], Some(&ca)),
                "not https://",
            ),
            (
                node("https://10.0.0.6:1", &["10.0.0.5"], Some(&ca)),
                "not at one of",
            ),
            (
                node("https://169.254.169.254:1", &["169.254.169.254"], Some(&ca)),
                "no agent listens",
            ),
            (
                node("https://0.0.0.0:1", &["0.0.0.0"], Some(&ca)),
                "no agent listens",
            ),
            (
                node("https://[fe80::1]:1", &["fe80::1"], Some(&ca)),
                "no agent listens",
            ),
            (
                node(
                    "https://[::ffff:169.254.169.254]:1",
                    &["::ffff:169.254.169.254"],
                    Some(&ca),
                ),
                "no agent listens",
            ),
            (
                node("https://[::169.254.169.254]:1", &["::169.254.169.254"], Some(&ca)),
                "no agent listens",
            ),
            (
                node("https://[fd00:ec2::254]:1", &["fd00:ec2::254"], Some(&ca)),
                "no agent listens",
            ),
            (
                node("https://240.1.2.3:1", &["240.1.2.3"], Some(&ca)),
                "no agent listens",
            ),
            (
                node("https://0.1.2.3:1", &["0.1.2.3"], Some(&ca)),
                "no agent listens",
            ),
            (
                node("https://agent.example:1", &["10.0.0.5"], Some(&ca)),
                "IP address",
            ),
            (node("https://10.0.0.5:1", &["10.0.0.5"], None), "no CA"),
            (
                node("https://10.0.0.5:1", &["10.0.0.5"], Some(&two)),
                "not a node's own CA",
            ),
            (
                node("https://10.0.0.5:1", &["10.0.0.5"], Some(&cluster)),
                "not a node's own CA",
            ),
        ] {
            let err = node_port(&n).expect_err(why);
            assert!(err.contains(why), "{err:?} should say {why:?}");
        }
    }

    fn line<T: Serialize>(type_: EventType, object: &T) -> Vec<u8> {
        serde_json::to_vec(&WatchEvent {
            type_,
            object: serde_json::to_value(object).expect("json"),
        })
        .expect("json")
    }

    #[test]
    fn selectors_with_reserved_characters_and_unicode_survive_the_query_string() {
        let label = "app in (a&b, c=d),tier!=100% café,x+y";
        let field = "metadata.name=z&watch=true";
        let params = ListParams {
            label_selector: Some(label.into()),
            field_selector: Some(field.into()),
        };
        let mut q = params.query();
        q.push(("continue", "a b/c?d#e".into()));
        let encoded = encode_query(&q);
        assert!(!encoded.contains(' ') && !encoded.contains('#'), "{encoded}");
        // Exactly three pairs: no `&` or `=` of a value splits it.
        let decoded: Vec<(String, String)> =
            form_urlencoded::parse(encoded.as_bytes()).into_owned().collect();
        assert_eq!(
            decoded,
            vec![
                ("labelSelector".to_owned(), label.to_owned()),
                ("fieldSelector".to_owned(), field.to_owned()),
                ("continue".to_owned(), "a b/c?d#e".to_owned()),
            ]
        );
        assert_eq!(encode_query(&[]), "");
    }

    /// Every error in `e`'s chain, outermost first.
    fn chain<'a>(e: &'a (dyn std::error::Error + 'static)) -> Vec<&'a (dyn std::error::Error + 'static)> {
        std::iter::successors(Some(e), |e| e.source()).collect()
    }

    #[tokio::test]
    async fn a_refused_connection_keeps_the_io_error_as_its_cause() {
        // Nothing listens on port 1.
        let err = Client::new("http://127.0.0.1:1", "t")
            .whoami()
            .await
            .expect_err("refused");
        assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
        let io = chain(&err)
            .into_iter()
            .find_map(|e| e.downcast_ref::<std::io::Error>())
            .unwrap_or_else(|| panic!("no io::Error in the chain of {err:?}"));
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
        // The message says where; the cause is in the chain, not repeated in it.
        assert_eq!(err.to_string(), "cannot reach the Wisp API at http://127.0.0.1:1");
    }

    #[test]
    fn decode_and_config_errors_keep_their_causes() {
        let err = decode_event::<ConfigMap>(b"not json").expect_err("not an event");
        let source = std::error::Error::source(&err).expect("a source");
        assert!(source.downcast_ref::<serde_json::Error>().is_some(), "{source:?}");

        let missing = std::env::temp_dir().join("wisp-client-no-such-dir/config");
        let err = Config::load(&missing).expect_err("no file");
        let io = std::error::Error::source(&err)
            .and_then(|e| e.downcast_ref::<std::io::Error>())
            .expect("the io error");
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        assert!(err.to_string().contains("wisp-client-no-such-dir"), "{err}");
    }

    #[test]
    fn watch_lines_decode_straight_into_the_kind_and_error_events_into_errors() {
        let mut cm = ConfigMap::new(ObjectMeta::namespaced("default", "c"));
        cm.data.insert("k".into(), "v".into());
        let ev = decode_event::<ConfigMap>(&line(EventType::Added, &cm)).expect("decoded");
        assert_eq!((ev.type_, ev.object), (EventType::Added, cm.clone()));
        // The same line as a DynamicObject (watch_dyn).
        let ev = decode_event::<DynamicObject>(&line(EventType::Modified, &cm)).expect("decoded");
        assert_eq!(ev.object.metadata.name, "c");
        // An ERROR event is the error it carries, never an object — also where its Status
        // would decode as one (a DynamicObject takes any JSON object).
        let status = Status::failure(410, "Expired", "too old resource version: 5 (7)");
        match decode_event::<ConfigMap>(&line(EventType::Error, &status)) {
            Err(ClientError::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (410, "Expired")),
            other => panic!("not the API error: {other:?}"),
        }
        match decode_event::<DynamicObject>(&line(EventType::Error, &status)) {
            Err(ClientError::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (410, "Expired")),
            other => panic!("not the API error: {other:?}"),
        }
        // Not an event at all: a decode error that says so.
        match decode_event::<ConfigMap>(b"{\"type\":\"ADDED\"") {
            Err(ClientError::Decode { what, .. }) => assert_eq!(what, "watch event"),
            other => panic!("not a decode error: {other:?}"),
        }
        // An event whose object is not of the kind.
        match decode_event::<ConfigMap>(br#"{"type":"ADDED","object":{"data":7}}"#) {
            Err(ClientError::Decode { what, .. }) => assert_eq!(what, "watch object"),
            other => panic!("not a decode error: {other:?}"),
        }
    }
}
