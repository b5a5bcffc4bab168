//! The admin API against its own OpenAPI document, fuzzed by schemathesis (PyPI): no request
//! may get a 5xx, and every response must match the document (status codes, content types,
//! bodies, headers).
//!
//! One check is left out on purpose: `positive_data_acceptance`, which expects every
//! request that fits the schema to succeed. The API validates more than a schema can say (a
//! log filter's syntax, an offset within the partition's bounds) and answers those with a
//! documented 400; that is the behaviour we want, not a defect.

mod common;

use std::process::{Command, Stdio};

use common::mqtt::{opts, persistent, V5};
use common::Broker;
use rumqttc::v5::mqttbytes::QoS;

#[tokio::test]
async fn admin_api_conforms_to_its_openapi_document_under_schemathesis() {
    let b = Broker::start();
    let http = b.http();
    // Some data, so that not every path answers 404.
    let mut car = V5::connect(persistent("car-1", b.port, 3600)).await;
    car.subscribe("v/car-1/cmd", QoS::AtLeastOnce).await;
    car.publish_acked("v/car-1/config", QoS::AtLeastOnce, true, "{}").await;
    let _live = V5::connect(opts("live-1", b.port)).await;

    let python = common::tools::python();
    let bin = std::path::Path::new(&python).with_file_name("schemathesis");
    let program = if bin.exists() { bin.display().to_string() } else { "schemathesis".to_string() };
    let out = Command::new(&program)
        .args(["run", &format!("{}/api/v1/openapi.json", http.base)])
        .args(["-H", &format!("Authorization: Bearer {}", http.token)])
        .args(["--max-examples", "40", "--seed", "1", "--exclude-checks", "positive_data_acceptance"])
        .args(["--request-timeout", "10", "--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (installed from tests/python/requirements.txt): {e}"));
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found problems:\n{report}\n{}", b.log());
    assert!(report.contains("passed"), "{report}");
    assert!(b.server.output().lines().all(|l| !l.contains("panicked")), "{}", b.log());
}
