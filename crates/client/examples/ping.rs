//! Logs in, pings once a second, and (with `--drop`) cuts its own socket
//! half-way to show a transparent resume.
//!
//! ```text
//! cargo run -p tether-client --example ping -- 127.0.0.1:7777 alice 10 --drop
//! ```

use std::time::Duration;

use tether_client::{Client, ClientConfig, Command, Event, GameEvent, Instant, Login};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7777".into());
    let name = args.next().unwrap_or_else(|| "pinger".into());
    let count: u32 = args.next().map_or(Ok(5), |n| n.parse())?;
    let drop_half_way = args.next().as_deref() == Some("--drop");

    let cfg = ClientConfig::new(addr.parse()?, Login::Dev(name));
    let mut client = Client::connect(cfg).await?;
    let w = client.welcome();
    println!(
        "welcome: session {} entity {} map {}x{} took_over={}",
        w.session_id,
        w.entity_id,
        w.world_info().width,
        w.world_info().height,
        w.took_over
    );

    let epoch = Instant::now();
    let mut sent = 0;
    let mut received = 0;
    let mut tick = Instant::now();
    while received < count {
        match client.next_event_until(tick).await {
            Some(Ok(Event::Deadline)) => {
                tick += Duration::from_secs(1);
                if sent < count {
                    let client_time = epoch.elapsed().as_micros() as u64;
                    client.send(Command::Ping { client_time })?;
                    sent += 1;
                    if drop_half_way && sent == count / 2 {
                        println!("dropping the connection");
                        client.drop_connection();
                    }
                }
            }
            Some(Ok(Event::Game(GameEvent::Pong(p)))) => {
                received += 1;
                let rtt = epoch.elapsed().as_micros() as u64 - p.client_time;
                println!("pong {received}: {:.3} ms", rtt as f64 / 1000.0);
            }
            Some(Ok(Event::Game(_))) => {}
            Some(Ok(other)) => println!("{other:?}"),
            Some(Err(e)) => return Err(e.into()),
            None => break,
        }
    }
    println!(
        "unacked inputs: {}, stats: {:?}",
        client.unacked_inputs(),
        client.stats()
    );
    client.logout();
    while let Some(ev) = client.next_event().await {
        if let Event::LoggedOut = ev? {
            println!("logged out");
        }
    }
    Ok(())
}
