//! `tether mcp` against a running server, driven by a real MCP client (the
//! rmcp SDK's, over the child process's stdio): the read-only tools by
//! default, the write tools only with --allow-writes, and a kick through
//! MCP that reaches the player and the audit log.

mod common;

use std::time::Duration;

use common::{admin_request, close_code, server, TestClient};
use rmcp::model::{CallToolRequestParams, CallToolResult, ClientConfig};
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use tether_proto::pb::{server_message::Msg, CloseCode};

#[derive(Debug, Clone, Default)]
struct Assistant;

impl ClientHandler for Assistant {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::default()
    }
}

async fn connect(
    admin: std::net::SocketAddr,
    writes: bool,
) -> RunningService<RoleClient, Assistant> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"));
    cmd.arg("mcp").arg("--admin").arg(admin.to_string());
    if writes {
        cmd.arg("--allow-writes");
    }
    cmd.env_remove("TETHER_MCP_TOKEN");
    let transport = TokioChildProcess::new(cmd).expect("tether mcp starts");
    Assistant.serve(transport).await.expect("MCP handshake")
}

fn text_of(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn call(
    client: &RunningService<RoleClient, Assistant>,
    tool: &'static str,
    args: serde_json::Value,
) -> CallToolResult {
    let mut params = CallToolRequestParams::new(tool);
    if let serde_json::Value::Object(map) = args {
        params = params.with_arguments(map);
    }
    tokio::time::timeout(Duration::from_secs(10), client.call_tool(params))
        .await
        .expect("the tool answers in time")
        .unwrap_or_else(|e| panic!("{tool}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assistant_reads_by_default_and_writes_only_when_allowed() {
    let (srv, _store) = server(|cfg| cfg.admin_history_interval_ms = 100);
    let admin = srv.admin_addr;
    let game = srv.game_addr;
    let mut ivy = tokio::task::spawn_blocking(move || TestClient::login(game, "ivy"))
        .await
        .unwrap();

    // Read-only.
    let client = connect(admin, false).await;
    let tools: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    for t in [
        "status",
        "players",
        "session",
        "recent_events",
        "metrics",
        "metrics_over_time",
        "why_is_latency_up",
    ] {
        assert!(tools.contains(&t.to_string()), "{t} missing from {tools:?}");
    }
    for t in ["kick", "ban", "notice", "drain"] {
        assert!(
            !tools.contains(&t.to_string()),
            "{t} listed without --allow-writes"
        );
    }
    let status = text_of(&call(&client, "status", serde_json::json!({})).await);
    assert!(status.contains("\"players\": 1"), "{status}");
    let session = text_of(&call(&client, "session", serde_json::json!({"account": "ivy"})).await);
    assert!(session.contains("\"link\": \"active\""), "{session}");
    let nobody = call(&client, "session", serde_json::json!({"account": "nobody"})).await;
    assert_eq!(
        nobody.is_error,
        Some(true),
        "an unknown account is a tool error"
    );
    let why = text_of(&call(&client, "why_is_latency_up", serde_json::json!({})).await);
    assert!(why.contains("nothing on the server side"), "{why}");
    let metrics = text_of(
        &call(
            &client,
            "metrics",
            serde_json::json!({"prefix": "tether_sessions"}),
        )
        .await,
    );
    assert!(
        metrics.contains("tether_sessions{state=\"active\"} 1"),
        "{metrics}"
    );
    // The history samples every 100 ms here.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let over_time = text_of(
        &call(
            &client,
            "metrics_over_time",
            serde_json::json!({"minutes": 1}),
        )
        .await,
    );
    assert!(over_time.contains("players: "), "{over_time}");
    assert!(
        over_time.contains(" / 1\n"),
        "the last players value is 1: {over_time}"
    );
    client.cancel().await.unwrap();

    // With writes: a kick reaches the player and the audit log.
    let client = connect(admin, true).await;
    let kicked = call(
        &client,
        "kick",
        serde_json::json!({"account": "ivy", "note": "asked by the assistant"}),
    )
    .await;
    assert_ne!(kicked.is_error, Some(true), "{}", text_of(&kicked));
    let close = tokio::task::spawn_blocking(move || {
        ivy.recv_until(Duration::from_secs(5), |m| matches!(m, Msg::Close(_)))
    })
    .await
    .unwrap();
    assert_eq!(close_code(&close), Some(CloseCode::Kicked));
    let events = text_of(&call(&client, "recent_events", serde_json::json!({"limit": 5})).await);
    assert!(events.contains("asked by the assistant"), "{events}");
    client.cancel().await.unwrap();

    let (code, body) = tokio::task::spawn_blocking(move || {
        admin_request(admin, "GET", "/v1/audit?limit=1", None, "")
    })
    .await
    .unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("\"action\":\"kick\""), "{body}");
}
