//! The dashboard in a real browser: Debian's Chromium, driven by chromedriver (WebDriver)
//! through fantoccini, against `wisp up`. It logs in with a token, watches a Function's
//! requests/s rise on the live functions page while the test sends traffic, clicks through to
//! the Function and its pod's live logs, checks accessibility basics on every page and the
//! phone width, then logs in with a namespace token that sees its namespace only. The forms'
//! CSRF checks are tried without a browser. Screenshots go to `$WISP_SCREENSHOTS_DIR`
//! (default `target/ui-screenshots`).

#![allow(clippy::print_stderr)] // the test says where its screenshots are

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use http_body_util::{BodyExt, Empty};
use wisp_api::{Container, Function, Namespace, ObjectMeta, Resource};
use wisp_e2e::{Options, Wisp, until};

/// chromedriver on a free loopback port; killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn driver() -> anyhow::Result<Driver> {
    let port = free_port()?;
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("chromedriver (Debian's chromium-driver; tests/run.sh installs it)")?;
    let d = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    until("chromedriver listening", 30, async || {
        Ok(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok())
    })
    .await?;
    Ok(d)
}

async fn browser(driver: &Driver) -> anyhow::Result<Browser> {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"],
        }),
    );
    // The API server's certificate chains to the cluster's own CA.
    caps.insert("acceptInsecureCerts".into(), serde_json::Value::Bool(true));
    Ok(
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url)
            .await?,
    )
}

fn shots_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("WISP_SCREENSHOTS_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn shot(b: &Browser, name: &str) -> anyhow::Result<()> {
    let path = shots_dir()?.join(format!("{name}.png"));
    std::fs::write(&path, b.screenshot().await?)?;
    eprintln!("screenshot: {}", path.display());
    Ok(())
}

/// Accessibility basics of the page in the browser: a language, one `h1`, a `main` landmark,
/// a labelled navigation, a name for every control, a header cell per table column, no
/// horizontal scrolling of the page, and text that stands out from what is behind it (WCAG
/// AA contrast: 4.5:1, 3:1 for large text; colours as the browser renders them, whatever the
/// CSS wrote them as). The list of what fails.
async fn accessibility(b: &Browser) -> anyhow::Result<Vec<String>> {
    let found = b
        .execute(
            r##"
            const problems = [];
            if (!document.documentElement.lang) problems.push("html has no lang");
            if (document.querySelectorAll("h1").length !== 1) problems.push("not exactly one h1");
            if (!document.querySelector("main")) problems.push("no main landmark");
            const nav = document.querySelector("nav");
            if (nav && !nav.getAttribute("aria-label")) problems.push("nav has no label");
            for (const el of document.querySelectorAll("input:not([type=hidden]), button, select, textarea, a[href]")) {
              const labelled = (el.id && document.querySelector(`label[for="${el.id}"]`)) ||
                el.getAttribute("aria-label") || (el.textContent || "").trim();
              if (!labelled) problems.push("no name: " + el.outerHTML.slice(0, 80));
            }
            for (const t of document.querySelectorAll("table")) {
              if (!t.querySelector("caption")) problems.push("table without caption");
              if (t.querySelectorAll("thead th[scope=col]").length === 0) problems.push("table without column headers");
            }
            if (document.documentElement.scrollWidth > window.innerWidth + 1)
              problems.push("the page scrolls sideways: " + document.documentElement.scrollWidth + " > " + window.innerWidth);
            // Contrast: each element with text of its own, against the first opaque background
            // behind it (translucent ones composed over it).
            const ctx = Object.assign(document.createElement("canvas"), { width: 1, height: 1 })
              .getContext("2d", { willReadFrequently: true });
            const rgba = (css) => {
              ctx.clearRect(0, 0, 1, 1);
              ctx.fillStyle = "#000"; ctx.fillStyle = css; ctx.fillRect(0, 0, 1, 1);
              const [r, g, b, a] = ctx.getImageData(0, 0, 1, 1).data;
              return [r, g, b, a / 255];
            };
            const over = (top, under) => top.slice(0, 3).map((c, i) => c * top[3] + under[i] * (1 - top[3])).concat(1);
            const behind = (el) => {
              const layers = [];
              for (let e = el; e; e = e.parentElement) {
                const style = getComputedStyle(e);
                if (style.backgroundImage !== "none") problems.push("contrast not checked over a background image: " + e.tagName.toLowerCase());
                const c = rgba(style.backgroundColor);
                if (c[3] > 0) { layers.push(c); if (c[3] === 1) break; }
              }
              return layers.reduceRight((under, top) => over(top, under), [255, 255, 255, 1]);
            };
            // The opacity an element is drawn with: its own and its ancestors'.
            const opacity = (el) => {
              let o = 1;
              for (let e = el; e; e = e.parentElement) o *= Number(getComputedStyle(e).opacity);
              return o;
            };
            const luminance = (c) => {
              const [r, g, b] = c.slice(0, 3).map((v) => { v /= 255; return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
              return 0.2126 * r + 0.7152 * g + 0.0722 * b;
            };
            let checked = 0;
            for (const el of document.body.querySelectorAll("*")) {
              if (!(el instanceof HTMLElement) || el.closest("svg")) continue;
              const own = [...el.childNodes].some((n) => n.nodeType === Node.TEXT_NODE && n.textContent.trim());
              if (!own || el.getClientRects().length === 0) continue;
              const style = getComputedStyle(el);
              const seen = opacity(el);
              if (style.visibility !== "visible" || seen === 0) continue;
              const bg = behind(el);
              const color = rgba(style.color);
              const fg = over([color[0], color[1], color[2], color[3] * seen], bg);
              const [hi, lo] = [luminance(fg), luminance(bg)].sort((x, y) => y - x);
              const ratio = (hi + 0.05) / (lo + 0.05);
              const size = parseFloat(style.fontSize);
              const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
              checked++;
              if (ratio < (large ? 3 : 4.5))
                problems.push(`contrast ${ratio.toFixed(2)}:1 of ${el.tagName.toLowerCase()} "${el.textContent.trim().slice(0, 40)}": ${style.color} on rgb(${bg.slice(0, 3).map(Math.round)})`);
            }
            if (checked === 0) problems.push("no text checked for contrast");
            return problems;
            "##,
            vec![],
        )
        .await?;
    Ok(serde_json::from_value(found)?)
}

async fn assert_accessible(b: &Browser, page: &str) -> anyhow::Result<()> {
    let problems = accessibility(b).await?;
    anyhow::ensure!(problems.is_empty(), "{page}: {problems:#?}");
    Ok(())
}

async fn log_in(b: &Browser, api: &str, token: &str) -> anyhow::Result<()> {
    b.goto(&format!("{api}/ui")).await?;
    // Not logged in: the login form.
    shown(b, "#token").await?;
    assert!(b.current_url().await?.path().ends_with("/ui/login"));
    assert_accessible(b, "login").await?;
    b.find(Locator::Css("#token")).await?.send_keys(token).await?;
    b.find(Locator::Css("form button[type=submit]"))
        .await?
        .click()
        .await?;
    shown(b, "nav").await?;
    Ok(())
}

/// The element `css` finds once the page shows it (within 30 s).
async fn shown(b: &Browser, css: &str) -> anyhow::Result<fantoccini::elements::Element> {
    Ok(b.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(css))
        .await?)
}

/// The text of the first element `css` selects, read in the page (a live update may replace
/// the element between a find and a read).
async fn text_of(b: &Browser, css: &str) -> anyhow::Result<String> {
    let v = b
        .execute(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
            vec![serde_json::Value::String(css.to_owned())],
        )
        .await?;
    v.as_str()
        .map(str::to_owned)
        .with_context(|| format!("no {css} on the page"))
}

fn fault_function(ns: &str, name: &str, digest: &str) -> Function {
    let mut f = Function::new(ObjectMeta::namespaced(ns, name));
    f.spec.template.spec.containers = vec![Container {
        name: "fn".into(),
        wasm: Some(digest.into()),
        ..Container::default()
    }];
    f.spec.scaling.min_scale = 1;
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_browser() -> anyhow::Result<()> {
    let w = Wisp::start(Options {
        command: Some("up".into()),
        args: wisp_e2e::fast_autoscaler(),
        ..Options::default()
    })?;
    let admin = w.client();
    let ingress = wisp_e2e::node_ingress(&admin, "local").await?;
    let http = wisp_e2e::http_client();
    for ns in ["team-a", "team-b"] {
        admin
            .api::<Namespace>(None)
            .create(&Namespace::new(ObjectMeta::named(ns)))
            .await?;
    }
    let digest = admin
        .put_blob(Bytes::from(std::fs::read(wisp_e2e::guest("fault")?)?))
        .await?;
    admin
        .api::<Function>(Some("team-a"))
        .create(&fault_function("team-a", "shop", &digest))
        .await?;
    admin
        .api::<Function>(Some("team-b"))
        .create(&fault_function("team-b", "secret-b", &digest))
        .await?;
    let team_a = admin.create_token("team-a").await?;
    until("shop answering", 60, async || {
        let req = http::Request::get(format!("{ingress}/count"))
            .header(http::header::HOST, "shop.team-a.localhost")
            .body(Empty::<Bytes>::new())?;
        Ok(http.request(req).await.is_ok_and(|r| r.status() == 200))
    })
    .await?;

    // The forms' CSRF checks, without a browser: a login without the form's cookie is
    // refused, and so is a logout without the session's token.
    let api_http = w.api_http();
    for (cookie, form, what) in [
        (
            "",
            format!("token={}&csrf=aaaa", w.token),
            "the form's cookie missing",
        ),
        (
            "__Host-wisp_login_csrf=aaaa",
            format!("token={}&csrf=bbbb", w.token),
            "a form token unlike its cookie",
        ),
        (
            "__Host-wisp_login_csrf=aaaa",
            format!("token={}", w.token),
            "no form token",
        ),
    ] {
        let req = http::Request::post(format!("{}/ui/login", w.url))
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(http::header::COOKIE, cookie)
            .body(http_body_util::Full::new(Bytes::from(form)))?;
        let resp = w.api_http_full().request(req).await?;
        assert_eq!(resp.status(), 403, "a login with {what}");
        let cookies: Vec<&str> = resp
            .headers()
            .get_all(http::header::SET_COOKIE)
            .iter()
            .filter_map(|c| c.to_str().ok())
            .collect();
        assert!(
            cookies.iter().all(|c| !c.contains("wisp_session")),
            "{what}: {cookies:?}"
        );
    }

    // Anonymous: every page and stream sends to the login page; nothing is rendered.
    for path in [
        "/ui",
        "/ui/functions",
        "/ui/live/functions",
        "/ui/logs/team-a/x",
        "/ui/nodes",
    ] {
        let req = http::Request::get(format!("{}{path}", w.url)).body(Empty::<Bytes>::new())?;
        let resp = api_http.request(req).await?;
        assert_eq!(resp.status(), 303, "{path} anonymously");
        assert_eq!(
            resp.headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok()),
            Some("/ui/login"),
            "{path}"
        );
    }
    // A node's credential cannot log in (the dashboard is for people: admin or namespace).
    let node = admin
        .issue_token(&wisp_client::TokenRequest {
            node: Some("local".into()),
            ..wisp_client::TokenRequest::default()
        })
        .await?;
    let req = http::Request::post(format!("{}/ui/login", w.url))
        .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(http::header::COOKIE, "__Host-wisp_login_csrf=aaaa")
        .body(http_body_util::Full::new(Bytes::from(format!(
            "token={}&csrf=aaaa",
            node.token
        ))))?;
    let resp = w.api_http_full().request(req).await?;
    assert_eq!(resp.status(), 403, "a node's credential at the login");
    assert!(
        resp.headers()
            .get_all(http::header::SET_COOKIE)
            .iter()
            .all(|c| !c.to_str().unwrap_or("").contains("wisp_session")),
        "no session for a node"
    );

    let d = driver().await?;
    let b = browser(&d).await?;
    log_in(&b, &w.url, &w.token).await?;
    assert!(text_of(&b, ".scope").await?.contains("cluster admin"));
    shown(&b, "#functions-count").await?;
    assert_accessible(&b, "overview").await?;
    assert!(
        text_of(&b, "main").await?.contains("local"),
        "the node on the overview"
    );
    shot(&b, "overview").await?;

    // The functions page updates itself while traffic flows.
    b.goto(&format!("{}/ui/functions", w.url)).await?;
    shown(&b, "tr[data-function=shop] td.rps").await?;
    assert_accessible(&b, "functions").await?;
    let before = text_of(&b, "tr[data-function=shop] td.rps").await?;
    let before_n: f64 = before.parse().unwrap_or(0.0);
    let stop = tokio_util::sync::CancellationToken::new();
    let traffic = {
        let (http, ingress, stop) = (http.clone(), ingress.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                if let Ok(req) = http::Request::get(format!("{ingress}/mark"))
                    .header(http::header::HOST, "shop.team-a.localhost")
                    .body(Empty::<Bytes>::new())
                {
                    let _ = http.request(req).await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut after = before.clone();
    let updated = until("the live requests/s to rise", 90, async || {
        after = text_of(&b, "tr[data-function=shop] td.rps").await?;
        Ok(after.parse::<f64>().unwrap_or(0.0) > before_n)
    })
    .await;
    let live = b.find(Locator::Css("main")).await?.attr("data-updated").await?;
    updated?;
    assert!(
        live.is_some(),
        "the page was updated in place (server-sent events), not reloaded"
    );
    eprintln!("requests/s on the live page: {before} → {after}");
    shot(&b, "functions").await?;

    // Click through: the Function, then its pod and the pod's live logs.
    b.find(Locator::LinkText("shop")).await?.click().await?;
    shown(&b, "#rps").await?;
    assert!(text_of(&b, "h1").await?.contains("team-a/shop"));
    assert_accessible(&b, "function detail").await?;
    let function_url = b.current_url().await?.to_string();
    // Its charts of the last 15 minutes: the samples so far, drawn as lines.
    until("the requests/s chart", 40, async || {
        let drawn = b
            .execute(
                "const l = document.querySelector('svg.chart polyline'); return l ? l.getAttribute('points') : null;",
                vec![],
            )
            .await?;
        Ok(drawn.as_str().is_some_and(|p| p.split(' ').count() >= 2))
    })
    .await?;
    let label = b
        .execute(
            "return document.querySelector('svg.chart').getAttribute('aria-label')",
            vec![],
        )
        .await?;
    assert!(
        label
            .as_str()
            .is_some_and(|l| l.starts_with("Requests per second")),
        "{label}"
    );
    shot(&b, "function").await?;
    b.find(Locator::Css("#pods tbody a")).await?.click().await?;
    shown(&b, "#logs").await?;
    until("marked lines in the live logs", 30, async || {
        Ok(text_of(&b, "#logs").await?.contains("marked"))
    })
    .await?;
    let first = text_of(&b, "#logs").await?.lines().count();
    until("the logs to grow while traffic flows", 30, async || {
        Ok(text_of(&b, "#logs").await?.lines().count() > first)
    })
    .await?;
    assert_accessible(&b, "pod").await?;
    let pod_url = b.current_url().await?.to_string();
    shot(&b, "logs").await?;
    stop.cancel();
    traffic.await?;

    // A phone's width: nothing scrolls sideways, the table scrolls in itself.
    b.set_window_size(390, 844).await?;
    b.goto(&format!("{}/ui/functions", w.url)).await?;
    shown(&b, "#functions").await?;
    assert_accessible(&b, "functions on a phone").await?;
    shot(&b, "functions-phone").await?;
    b.set_window_size(1280, 900).await?;

    // Each theme, by the switch (kept across pages), on each kind of page.
    let mut themes = Vec::new();
    for _ in 0..2 {
        b.goto(&format!("{}/ui/functions", w.url)).await?;
        shown(&b, "#theme").await?.click().await?;
        let theme = b
            .execute(
                "return document.documentElement.getAttribute('data-theme')",
                vec![],
            )
            .await?;
        let theme = theme.as_str().unwrap_or_default().to_owned();
        assert!(
            matches!(theme.as_str(), "dark" | "light"),
            "a theme was chosen: {theme}"
        );
        for (page, url) in [
            ("overview", format!("{}/ui", w.url)),
            ("functions", format!("{}/ui/functions", w.url)),
            ("function detail", function_url.clone()),
            ("pod", pod_url.clone()),
        ] {
            b.goto(&url).await?;
            shown(&b, "main h1").await?;
            assert_accessible(&b, &format!("{page} in the {theme} theme")).await?;
        }
        let bg = b
            .execute("return getComputedStyle(document.body).backgroundColor", vec![])
            .await?;
        eprintln!("theme {theme}: background {bg}");
        shot(&b, &format!("pod-{theme}")).await?;
        themes.push(theme);
    }
    assert_ne!(themes[0], themes[1], "the switch changes the theme");
    b.goto(&format!("{}/ui/functions", w.url)).await?;

    // Log out (the form carries the CSRF token), then in as team-a: its namespace only.
    let admin_session = b
        .get_named_cookie("__Host-wisp_session")
        .await?
        .value()
        .to_owned();
    b.find(Locator::Css("form[action='/ui/logout'] button"))
        .await?
        .click()
        .await?;
    shown(&b, "#token").await?;
    // The logged-out session is gone: its cookie gets the login page.
    let req = http::Request::get(format!("{}/ui/functions", w.url))
        .header(
            http::header::COOKIE,
            format!("__Host-wisp_session={admin_session}"),
        )
        .body(Empty::<Bytes>::new())?;
    assert_eq!(api_http.request(req).await?.status(), 303, "a logged-out session");
    log_in(&b, &w.url, &team_a).await?;
    assert!(text_of(&b, ".scope").await?.contains("namespace team-a"));
    b.goto(&format!("{}/ui/functions", w.url)).await?;
    shown(&b, "#functions").await?;
    let listed = text_of(&b, "#functions").await?;
    assert!(listed.contains("shop"), "{listed}");
    assert!(
        !listed.contains("secret-b") && !listed.contains("team-b"),
        "another namespace: {listed}"
    );
    for path in ["/ui/functions/team-b/secret-b", "/ui/nodes", "/ui/pods/team-b/x"] {
        b.goto(&format!("{}{path}", w.url)).await?;
        let page = text_of(&b, "main").await?;
        assert!(page.contains("Cannot show this"), "{path}: {page}");
        assert!(!page.contains("secret-b-"), "{path}: {page}");
    }
    for path in ["/ui/pods", "/ui"] {
        b.goto(&format!("{}{path}", w.url)).await?;
        let page = text_of(&b, "main").await?;
        assert!(
            !page.contains("team-b") && !page.contains("secret-b"),
            "{path}: {page}"
        );
    }
    // A page that is not a name goes nowhere else in the API.
    for path in [
        "/ui/functions/team-a/..%2F..%2Fnodes",
        "/ui/functions/team-b/-x",
        "/ui/pods/team-a/.x",
    ] {
        b.goto(&format!("{}{path}", w.url)).await?;
        assert!(text_of(&b, "main").await?.contains("Cannot show this"), "{path}");
    }

    // The session cookie is HttpOnly: the page's script cannot read it.
    let cookies = b.execute("return document.cookie", vec![]).await?;
    assert!(
        !cookies.as_str().unwrap_or("").contains("wisp_session"),
        "{cookies}"
    );
    // Without the session's CSRF token a logout form is refused.
    let session = b
        .get_named_cookie("__Host-wisp_session")
        .await?
        .value()
        .to_owned();
    // Nor do the streams of another namespace answer: 204, the page's EventSource stops.
    let other_pod = admin
        .api::<wisp_api::Pod>(Some("team-b"))
        .list(&wisp_client::ListParams::default())
        .await?
        .items
        .first()
        .map(|p| p.metadata.name.clone())
        .context("team-b's pod")?;
    for path in [
        "/ui/live/functions/team-b/secret-b".to_owned(),
        format!("/ui/logs/team-b/{other_pod}"),
        "/ui/live/nodes".to_owned(),
    ] {
        let req = http::Request::get(format!("{}{path}", w.url))
            .header(http::header::COOKIE, format!("__Host-wisp_session={session}"))
            .body(Empty::<Bytes>::new())?;
        let resp = api_http.request(req).await?;
        assert_eq!(resp.status(), 204, "{path}");
    }
    let req = http::Request::post(format!("{}/ui/logout", w.url))
        .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(http::header::COOKIE, format!("__Host-wisp_session={session}"))
        .body(Empty::<Bytes>::new())?;
    let resp = api_http.request(req).await?;
    assert_eq!(resp.status(), 403, "a form without the CSRF token");
    let _ = resp.into_body().collect().await;
    b.close().await?;
    Ok(())
}
