use super::*;

#[test]
fn cookies_are_found_by_name_among_several() {
    let req = Request::get("/ui")
        .header(header::COOKIE, format!("a=1; {SESSION_COOKIE}=abc"))
        .header(header::COOKIE, "b=2")
        .body(())
        .expect("request");
    assert_eq!(cookie(&req, SESSION_COOKIE), Some("abc"));
    assert_eq!(cookie(&req, "b"), Some("2"));
    assert_eq!(cookie(&req, "wisp"), None);
    assert_eq!(
        cookie(&req, "wisp_session"),
        None,
        "only the __Host- cookie counts"
    );
}

#[test]
fn sessions_expire_are_bounded_and_compare_in_constant_time() {
    let s = Sessions::default();
    let (id, csrf) = s.create("t".into()).expect("a session");
    assert_eq!(id.len(), 48);
    assert_eq!(s.get(&id), Some(("t".to_owned(), csrf.clone())));
    assert_eq!(s.get("nope"), None);
    s.remove(&id);
    assert_eq!(s.get(&id), None);
    assert!(same(&csrf, &csrf.clone()));
    assert!(!same(&csrf, &csrf[1..]));
    assert!(!same("abc", "abd"));
}
