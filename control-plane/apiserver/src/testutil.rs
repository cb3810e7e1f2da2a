//! For tests and benchmarks of the components above the API: a real API server on a fresh
//! embedded store, serving HTTP on a free loopback port, stopped when dropped; and clients
//! that call a server in this process (what `wisp up` wires for its own components).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::{ApiServer, Config, serve};

/// A client of `api` that calls it in this process, as `wisp up`'s own components do (see
/// [`ApiServer::handle_in_process`]).
pub trait InProcessClient {
    /// A client with `token`; `url` is where the server says it listens (never dialled).
    fn in_process_client(&self, url: &str, token: &str) -> wisp_client::Client;
}

impl InProcessClient for ApiServer {
    fn in_process_client(&self, url: &str, token: &str) -> wisp_client::Client {
        let api = self.clone();
        wisp_client::Client::in_process(url, token, move |req| api.handle_in_process(req))
    }
}

/// A started [`TestServer`] with an admin client over loopback HTTP and the server's shutdown
/// token (cancel it to stop the components a test runs against it); panics when the server
/// cannot start.
#[allow(clippy::panic)]
pub async fn started() -> (wisp_client::Client, CancellationToken, TestServer) {
    let server = TestServer::start()
        .await
        .unwrap_or_else(|e| panic!("cannot start the API server: {e}"));
    (server.client(), server.shutdown.clone(), server)
}

pub struct TestServer {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// The admin token.
    pub token: String,
    pub shutdown: CancellationToken,
    api: ApiServer,
    /// The server: drained by [`TestServer::stop`], aborted if dropped first.
    serving: Option<AbortOnDropHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Start the server (namespaces `default` and `wisp-system` exist).
    pub async fn start() -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let store = wisp_store::EmbeddedStore::open(dir.path(), wisp_store::EmbeddedOptions::default())
            .map_err(std::io::Error::other)?;
        let shutdown = CancellationToken::new();
        let server = ApiServer::new(
            Arc::new(store),
            Config::new(dir.path().join("blobs")),
            shutdown.clone(),
        );
        let token = server
            .bootstrap()
            .await
            .map_err(std::io::Error::other)?
            .ok_or_else(|| std::io::Error::other("a fresh store must issue an admin token"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let api = server.clone();
        let serving = AbortOnDropHandle::new(tokio::spawn(serve(server, listener, shutdown.clone())));
        Ok(Self {
            url,
            token,
            shutdown,
            api,
            serving: Some(serving),
            _dir: dir,
        })
    }

    /// Stops the server and waits until it has drained its connections.
    pub async fn stop(mut self) -> std::io::Result<()> {
        self.shutdown.cancel();
        match self.serving.take() {
            Some(serving) => serving.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }

    /// A client with the admin token, over loopback HTTP.
    pub fn client(&self) -> wisp_client::Client {
        wisp_client::Client::new(&self.url, &self.token)
    }

    /// A client with the admin token that calls the server in this process, as `wisp up`'s
    /// own components do (see [`ApiServer::in_process_client`]).
    pub fn in_process_client(&self) -> wisp_client::Client {
        self.api.in_process_client(&self.url, &self.token)
    }

    /// An in-process client acting as `principal` (a node's agent and ingress, as in
    /// `wisp up`), with a token that lives only in this process.
    pub fn in_process_client_as(
        &self,
        principal: crate::auth::Principal,
    ) -> std::io::Result<wisp_client::Client> {
        let token = self
            .api
            .auth()
            .issue_ephemeral(principal)
            .map_err(std::io::Error::other)?;
        Ok(self.api.in_process_client(&self.url, &token))
    }

    /// A stored token for `principal` (a namespace token, a node credential), over HTTP.
    pub async fn token_for(&self, principal: &crate::auth::Principal) -> std::io::Result<String> {
        self.api
            .auth()
            .issue(principal, None)
            .await
            .map(|(t, _)| t)
            .map_err(std::io::Error::other)
    }

    /// The server itself (blob garbage collection, its configuration).
    pub fn api(&self) -> &ApiServer {
        &self.api
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
