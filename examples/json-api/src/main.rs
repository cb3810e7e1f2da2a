//! `json-api`: a small JSON API whose routing lives in the component: `GET /items`,
//! `GET /items/<id>`, `POST /items` (echoes the item back with an id), anything else 404,
//! a wrong method 405. Fresh instance per request, so it keeps no state between them.

use wstd::http::body::Body;
use wstd::http::{Error, Method, Request, Response, StatusCode};

const ITEMS: &[(u32, &str)] = &[(1, "keyboard"), (2, "mouse"), (3, "monitor")];

fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        "application/json".parse().expect("a header value"),
    );
    r
}

fn item(id: u32, name: &str) -> String {
    format!(r#"{{"id":{id},"name":"{name}"}}"#)
}

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let path = request.uri().path().trim_end_matches('/').to_owned();
    let method = request.method().clone();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    Ok(match (method, segments.as_slice()) {
        (Method::GET, ["items"]) => {
            let all: Vec<String> = ITEMS.iter().map(|(id, n)| item(*id, n)).collect();
            json(StatusCode::OK, format!("[{}]", all.join(",")))
        }
        (Method::GET, ["items", id]) => match id
            .parse::<u32>()
            .ok()
            .and_then(|id| ITEMS.iter().find(|(i, _)| *i == id))
        {
            Some((id, name)) => json(StatusCode::OK, item(*id, name)),
            None => json(StatusCode::NOT_FOUND, format!(r#"{{"error":"no item {id}"}}"#)),
        },
        (Method::POST, ["items"]) => {
            let mut body = request.into_body();
            let name = body.str_contents().await?.trim().replace('"', "");
            json(StatusCode::CREATED, item(4, &name))
        }
        (_, ["items", ..]) => json(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":"method not allowed"}"#.into(),
        ),
        _ => json(StatusCode::NOT_FOUND, format!(r#"{{"error":"no route {path}"}}"#)),
    })
}
