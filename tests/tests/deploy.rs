//! The Kubernetes manifests in deploy/ parse, hold what a production rollout needs, and the
//! gateway configuration they ship compiles.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use egress_policy::istio::ConfigSet;
use egress_policy::yaml::{Node, Value, parse_documents};
use std::path::Path;

fn get<'a>(node: &'a Node, path: &[&str]) -> Option<&'a Node> {
    let mut cur = node;
    for key in path {
        let Value::Map(entries) = &cur.value else {
            return None;
        };
        cur = &entries.iter().find(|e| e.key == *key)?.value;
    }
    Some(cur)
}

fn text(node: Option<&Node>) -> Option<&str> {
    match &node?.value {
        Value::Scalar { text, .. } => Some(text),
        _ => None,
    }
}

fn manifests() -> Vec<(String, Node)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        let body = std::fs::read_to_string(&f).unwrap();
        let docs = parse_documents(&body).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for d in docs {
            out.push((f.file_name().unwrap().to_string_lossy().into_owned(), d));
        }
    }
    out
}

#[test]
fn manifests_parse_and_are_production_shaped() {
    let all = manifests();
    assert!(all.len() >= 7, "{}", all.len());
    for (file, doc) in &all {
        assert!(
            text(get(doc, &["apiVersion"])).is_some(),
            "{file}: apiVersion"
        );
        assert!(text(get(doc, &["kind"])).is_some(), "{file}: kind");
        assert!(
            text(get(doc, &["metadata", "name"])).is_some(),
            "{file}: metadata.name"
        );
    }
    let kinds: Vec<&str> = all
        .iter()
        .filter_map(|(_, d)| text(get(d, &["kind"])))
        .collect();
    for want in [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ConfigMap",
    ] {
        assert!(kinds.contains(&want), "no {want} in {kinds:?}");
    }
    for (file, d) in all
        .iter()
        .filter(|(_, d)| text(get(d, &["kind"])) == Some("Deployment"))
    {
        let replicas: u32 = text(get(d, &["spec", "replicas"]))
            .unwrap()
            .parse()
            .unwrap();
        assert!(replicas >= 2, "{file}: replicas {replicas}");
        let Value::Seq(containers) = &get(d, &["spec", "template", "spec", "containers"])
            .unwrap()
            .value
        else {
            panic!("{file}: containers")
        };
        let c = &containers[0];
        assert_eq!(
            text(get(c, &["readinessProbe", "httpGet", "path"])),
            Some("/healthz/ready"),
            "{file}"
        );
        assert!(get(c, &["livenessProbe"]).is_some(), "{file}: liveness");
        assert!(
            get(c, &["resources", "requests", "cpu"]).is_some(),
            "{file}: requests"
        );
        assert_eq!(
            text(get(c, &["securityContext", "allowPrivilegeEscalation"])),
            Some("false"),
            "{file}"
        );
        assert_eq!(
            text(get(
                d,
                &[
                    "spec",
                    "template",
                    "spec",
                    "securityContext",
                    "runAsNonRoot"
                ]
            )),
            Some("true"),
            "{file}"
        );
    }
    let dedicated = all
        .iter()
        .find(|(f, _)| f == "deployment-dedicated-nodes.yaml")
        .unwrap();
    assert_eq!(
        text(get(
            &dedicated.1,
            &["spec", "template", "spec", "hostNetwork"]
        )),
        Some("true")
    );
    assert!(get(&dedicated.1, &["spec", "template", "spec", "tolerations"]).is_some());
    assert!(
        get(
            &dedicated.1,
            &["spec", "template", "spec", "affinity", "nodeAffinity"]
        )
        .is_some()
    );
}

#[test]
fn shipped_gateway_config_compiles() {
    let all = manifests();
    let (_, cm) = all
        .iter()
        .find(|(_, d)| text(get(d, &["kind"])) == Some("ConfigMap"))
        .unwrap();
    let Value::Map(data) = &get(cm, &["data"]).unwrap().value else {
        panic!("data")
    };
    for e in data {
        let Value::Scalar { text: yaml, .. } = &e.value.value else {
            panic!("{}", e.key)
        };
        let set = ConfigSet::load_str(&e.key, yaml);
        assert!(!set.diagnostics.has_errors(), "{}", set.diagnostics);
        let (registry, _) = egress_policy::Registry::compile(&set, None).unwrap();
        assert!(!registry.services().is_empty());
    }
}

#[test]
fn dockerfile_is_multi_stage_and_non_root() {
    let d = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Dockerfile"))
        .unwrap();
    assert!(d.matches("\nFROM ").count() >= 2, "{d}");
    assert!(d.contains("USER 65532"), "{d}");
    assert!(d.contains("--locked -p egress-gateway"), "{d}");
}
