//! The SDK in an application's own client (the `registry_client` example), against a real
//! loopback origin.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use egress_tests::Origin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_stack_allows_registered_and_refuses_the_rest() {
    let origin = Origin::start().await;
    let svc = egress_examples::registry_client::client(
        &egress_examples::registry_client::example_registry(origin.addr),
    )
    .unwrap();
    let get = |url: &'static str| egress_examples::registry_client::get(svc.clone(), url);
    let (status, denied, body) = get("http://api.internal.test/hello").await.unwrap();
    assert_eq!(
        (status, denied, body.as_str()),
        (200, None, "hello from origin")
    );
    assert_eq!(origin.requests()[0].headers["host"], "api.internal.test");

    let (status, denied, body) = get("http://unregistered.example.com/").await.unwrap();
    assert_eq!(status, 502);
    assert_eq!(denied.as_deref(), Some("registry-only"));
    assert!(body.contains("unregistered.example.com:80"), "{body}");
    let (status, denied, _) = get("http://0x7f.1/").await.unwrap();
    assert_eq!((status, denied.as_deref()), (400, Some("malformed")));
    assert_eq!(origin.count(), 1);
}

#[test]
fn example_binary_runs() {
    // The example itself, as a user runs it.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("examples").join("registry_client");
    assert!(bin.exists(), "{} not built", bin.display());
    let out = std::process::Command::new(bin).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("allowed: http://api.internal.test/hello -> 200"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "refused: http://unregistered.example.com/ -> 502 (x-egress-denied: registry-only)"
        ),
        "{stdout}"
    );
}
