#![no_main]
//! Any bytes as a configuration file: loaded and compiled (registry, routes, policies,
//! JWT rules) or refused with diagnostics that name the file, never a panic.

use egress_policy::Registry;
use egress_policy::authz::{AuthzPolicies, Identity};
use egress_policy::istio::{Binding, ConfigSet};
use egress_policy::jwt::JwtPolicy;
use egress_policy::routes::RouteTable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let config = ConfigSet::load_str("fuzz.yaml", &text);
    for d in config.diagnostics.errors() {
        assert_eq!(&*d.file, "fuzz.yaml", "{d}");
    }
    let Ok((registry, _)) = Registry::compile(&config, None) else {
        return;
    };
    let labels = vec![("istio".to_owned(), "egressgateway".to_owned())];
    let binding = Binding::new(&config.gateways, &labels);
    let _ = RouteTable::compile(&config, &registry, &binding);
    let identity = Identity::new("istio-system/istio-egressgateway", &labels, &binding);
    let _ = AuthzPolicies::compile(&config, &identity);
    let _ = JwtPolicy::compile(&config, &identity);
});
