#[tokio::test]
async fn sleepy() {
    let cp = ficus_e2e::control_plane_or_skip!();
    let _ = cp.client().await.unwrap();
    std::thread::sleep(std::time::Duration::from_secs(60));
}
#[tokio::test]
async fn private_drop() {
    let cp = ficus_e2e::ControlPlane::start().unwrap();
    let out = cp.kubectl(&["get", "--raw", "/readyz"]).unwrap();
    assert!(out.success(), "{out}");
    let dir = cp.dir().to_owned();
    drop(cp);
    assert!(!dir.exists());
}
