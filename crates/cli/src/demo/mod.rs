//! `tarmac demo`: a whole mesh on this machine in one command, to see what Tarmac does
//! before installing it anywhere.
//!
//! Everything runs on 127.0.0.1 in explicit mode, so nothing needs root: three sample
//! services in this process ([`apps`]), a real `tarmac-proxy` process beside each
//! ([`sidecar`]), and a traffic client calling `web` through a sidecar of its own. Every
//! refresh, the golden metrics are read from the sidecars' `/metrics` ([`metrics`]) and
//! printed ([`report`]); on Ctrl-C, SIGTERM or the end of `--for`, traffic stops, the
//! sidecars are scraped one last time and stopped, and a summary of the run is printed.

mod apps;
mod metrics;
mod report;
pub(crate) mod sidecar;

use crate::duration;
use crate::identity::EphemeralCa;
use crate::workdir::WorkDir;
use apps::{RunningService, TrafficTotals};
use metrics::Reading;
use report::Row;
use sidecar::{Inbound, Outbound, PortAllocator, Sidecar, SidecarConfig, Stopped};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tarmac_control::http_client::HttpClient;
use tarmac_control::prometheus::Scrape;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How often the live table is printed.
const REFRESH: Duration = Duration::from_secs(2);
/// How long each sidecar has to answer `/ready` after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a sidecar may drain after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long requests still in flight when traffic stops may take to finish.
const TRAFFIC_DRAIN: Duration = Duration::from_secs(2);
/// A scrape of a sidecar on loopback that takes longer than this is reported as missing.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);

/// Run a local mesh with sample services and traffic, and watch its golden metrics.
///
/// Three sample services (web calls books and authors) each get a real tarmac-proxy
/// sidecar, and a traffic client calls web through a sidecar of its own. Every 2 s the
/// success rate, requests per second and latency of each service, and each sidecar's
/// memory and CPU, are read from the sidecars' /metrics and printed; at the end, a
/// summary of the whole run.
///
/// Everything listens on 127.0.0.1 and needs no root: the services call each other
/// through their sidecars' local ports (explicit mode). Needs the tarmac-proxy binary next
/// to this one (`cargo build --release`) or in $TARMAC_PROXY_BIN.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// How long to send traffic, e.g. `30s` or `2m`; without it, until Ctrl-C.
    #[arg(long = "for", value_name = "DURATION", value_parser = duration::parse_positive)]
    pub run_for: Option<Duration>,
    /// Requests per second the traffic client sends to `web`.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub rps: u32,
    /// First of ten consecutive loopback ports for the sidecars' listeners; 0 picks free
    /// ports. The sample services always listen on ports the OS picks.
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    pub base_port: u16,
}

/// Runs the demo until it is stopped; Err is a message for the user.
pub async fn run(args: DemoArgs) -> Result<(), String> {
    let proxy_binary = sidecar::locate_proxy_binary()?;
    // Installed first, so that Ctrl-C at any moment stops the demo cleanly instead of
    // killing it with sidecars left running.
    let mut stop_signals = StopSignals::install()?;
    let workdir = WorkDir::create("demo")?;
    let mut mesh = Mesh::default();
    let (exits_tx, mut exits) = mpsc::unbounded_channel();

    let started = tokio::select! {
        biased;
        reason = stop_signals.recv() => Err(Ending::StoppedWhileStarting(reason)),
        started = mesh.start(&proxy_binary, args.base_port, workdir.path(), exits_tx) => started.map_err(Ending::Failed),
    };
    let ending = match started {
        Ok(()) => observe(&mesh, &args, workdir.path(), &mut stop_signals, &mut exits).await,
        Err(ending) => ending,
    };

    let stop_problems = mesh.stop().await;
    drop(workdir);
    let result = match ending {
        Ending::Finished(summary) => {
            println!("{summary}");
            Ok(())
        }
        Ending::StoppedWhileStarting(reason) => {
            println!("Stopped by {reason} while starting; everything started has been stopped.");
            Ok(())
        }
        Ending::Failed(message) => Err(message),
    };
    // After the outcome, which matters more; a sidecar that failed to start or died is
    // reported there, and the others' fate here.
    let problems = stop_problems.iter().map(|p| format!("\n  also: {p}")).collect::<String>();
    match result {
        Err(message) => Err(format!("{message}{problems}")),
        Ok(()) if problems.is_empty() => Ok(()),
        Ok(()) => Err(format!("the demo ran, but stopping it did not go cleanly:{problems}")),
    }
}

/// How the demo ended.
enum Ending {
    /// Traffic ran and stopped as asked: the summary to print.
    Finished(String),
    StoppedWhileStarting(&'static str),
    Failed(String),
}

/// The running workloads and their sidecars.
#[derive(Default)]
struct Mesh {
    services: Vec<RunningService>,
    /// In display order: web, books, authors, traffic.
    sidecars: Vec<Sidecar>,
}

impl Mesh {
    /// Starts the services and sidecars and waits until every sidecar is ready. Whatever
    /// was started is recorded in `self` as soon as it runs, so [`Mesh::stop`] stops it
    /// even if starting fails or is interrupted halfway.
    async fn start(
        &mut self,
        proxy_binary: &Path,
        base_port: u16,
        dir: &Path,
        exits: mpsc::UnboundedSender<&'static str>,
    ) -> Result<(), String> {
        let books_listener = bind_loopback().await?;
        let authors_listener = bind_loopback().await?;
        let web_listener = bind_loopback().await?;
        let app_addr =
            |l: &TcpListener| l.local_addr().map_err(|e| format!("cannot read a bound address: {e}"));

        // Ports in the order the workloads are listed, so that with --base-port web's
        // sidecar gets the first: admin, inbound, then its outbound listeners.
        let mut ports = PortAllocator::new(base_port);
        let (web_admin, web_inbound) = (ports.next()?, ports.next()?);
        let (to_books, to_authors) = (ports.next()?, ports.next()?);
        let (books_admin, books_inbound) = (ports.next()?, ports.next()?);
        let (authors_admin, authors_inbound) = (ports.next()?, ports.next()?);
        let (traffic_admin, to_web) = (ports.next()?, ports.next()?);

        // Every hop between sidecars is mTLS, with a CA made for this run: each workload
        // proves its own SPIFFE ID and checks the one it calls.
        let ca = EphemeralCa::create(dir)?;
        let [web_id, books_id, authors_id, traffic_id] =
            ["web", "books", "authors", "traffic"].map(|sa| ca.certify(sa));
        let (web_id, books_id, authors_id, traffic_id) = (web_id?, books_id?, authors_id?, traffic_id?);
        let web = SidecarConfig {
            workload: "web",
            admin: web_admin,
            inbound: Some(Inbound { listen: web_inbound, app: app_addr(&web_listener)? }),
            outbound: vec![
                Outbound {
                    service: "books",
                    listen: to_books,
                    endpoint: books_inbound,
                    identity: books_id.id.clone(),
                },
                Outbound {
                    service: "authors",
                    listen: to_authors,
                    endpoint: authors_inbound,
                    identity: authors_id.id.clone(),
                },
            ],
            identity_yaml: ca.proxy_yaml(&web_id),
        };
        let books = SidecarConfig {
            workload: "books",
            admin: books_admin,
            inbound: Some(Inbound { listen: books_inbound, app: app_addr(&books_listener)? }),
            outbound: Vec::new(),
            identity_yaml: ca.proxy_yaml(&books_id),
        };
        let authors = SidecarConfig {
            workload: "authors",
            admin: authors_admin,
            inbound: Some(Inbound { listen: authors_inbound, app: app_addr(&authors_listener)? }),
            outbound: Vec::new(),
            identity_yaml: ca.proxy_yaml(&authors_id),
        };
        let traffic = SidecarConfig {
            workload: "traffic",
            admin: traffic_admin,
            inbound: None,
            outbound: vec![Outbound {
                service: "web",
                listen: to_web,
                endpoint: web_inbound,
                identity: web_id.id.clone(),
            }],
            identity_yaml: ca.proxy_yaml(&traffic_id),
        };

        self.services.push(apps::start_books(books_listener));
        self.services.push(apps::start_authors(authors_listener));
        self.services.push(apps::start_web(web_listener, to_books, to_authors));

        ports.release();
        for config in [web, books, authors, traffic] {
            self.sidecars.push(Sidecar::spawn(proxy_binary, config, dir, exits.clone())?);
        }
        for sidecar in &self.sidecars {
            sidecar.wait_ready(READY_TIMEOUT).await?;
        }
        Ok(())
    }

    fn sidecar(&self, workload: &str) -> &Sidecar {
        self.sidecars.iter().find(|s| s.config.workload == workload).expect("every workload has a sidecar")
    }

    /// Stops the sidecars (SIGTERM, then SIGKILL after [`STOP_GRACE`]) and the services.
    /// Returns what did not go as it should, for the user.
    async fn stop(self) -> Vec<String> {
        let mut stopping = tokio::task::JoinSet::new();
        for sidecar in self.sidecars {
            stopping
                .spawn(async move { (sidecar.config.workload, sidecar.pid, sidecar.stop(STOP_GRACE).await) });
        }
        let mut problems = Vec::new();
        while let Some(joined) = stopping.join_next().await {
            let Ok((workload, pid, stopped)) = joined else { continue };
            match stopped {
                Stopped::AlreadyExited { reported: true, .. } => {}
                Stopped::AlreadyExited { exit, reported: false } => problems.push(format!(
                    "the {workload} sidecar (pid {pid}) had exited already: {}",
                    sidecar::describe(&exit)
                )),
                Stopped::Exited(exit) if sidecar::is_clean_stop(&exit) => {}
                Stopped::Exited(exit) => problems.push(format!(
                    "the {workload} sidecar (pid {pid}) stopped with {}",
                    sidecar::describe(&exit)
                )),
                Stopped::Killed => problems.push(format!(
                    "the {workload} sidecar (pid {pid}) had not exited {}s after SIGTERM and was killed",
                    STOP_GRACE.as_secs()
                )),
            }
        }
        for service in self.services {
            service.stop();
        }
        problems
    }
}

/// Sends traffic and prints the live table until the demo is stopped, then scrapes the
/// sidecars one last time for the summary.
async fn observe(
    mesh: &Mesh,
    args: &DemoArgs,
    workdir: &Path,
    stop_signals: &mut StopSignals,
    exits: &mut mpsc::UnboundedReceiver<&'static str>,
) -> Ending {
    let scraped: Vec<ScrapeTarget> = mesh.sidecars.iter().map(ScrapeTarget::new).collect();
    let baseline = match read_all(&scraped).await.into_iter().collect::<Result<Vec<_>, _>>() {
        Ok(readings) => readings,
        Err(e) => return Ending::Failed(format!("cannot read the sidecars' metrics: {e}")),
    };
    println!("{}", introduction(mesh, args, workdir));

    let traffic_client = Arc::new(HttpClient::new(
        mesh.sidecar("traffic").config.outbound("web").expect("the traffic sidecar routes to web"),
        Duration::from_secs(10),
    ));
    let (stop_traffic, traffic_stopped) = watch::channel(false);
    let traffic =
        tokio::spawn(apps::generate_traffic(traffic_client, args.rps, traffic_stopped, TRAFFIC_DRAIN));
    let started = Instant::now();
    let time_up = async {
        match args.run_for {
            Some(run_for) => tokio::time::sleep_until(started + run_for).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(time_up);
    let mut refresh = tokio::time::interval_at(started + REFRESH, REFRESH);
    let mut previous = baseline.clone();

    let stopped_by = loop {
        tokio::select! {
            biased;
            Some(workload) = exits.recv() => {
                traffic.abort();
                return Ending::Failed(mesh.sidecar(workload).unexpected_exit_report());
            }
            reason = stop_signals.recv() => break reason,
            _ = &mut time_up => break "--for",
            _ = refresh.tick() => {
                let readings = read_all(&scraped).await;
                let rows = rows(&scraped, &readings, &previous);
                println!("{}", report::live_table(started.elapsed(), &rows));
                // A sidecar that could not be read is compared with its last good reading
                // next time, so its next period is a longer one rather than lost.
                for (previous, reading) in previous.iter_mut().zip(readings) {
                    if let Ok(reading) = reading {
                        *previous = reading;
                    }
                }
            }
        }
    };

    let _ = stop_traffic.send(true);
    let totals = traffic.await.unwrap_or_default();
    let ran_for = started.elapsed();
    // The last scrape, before the sidecars stop: their counters vanish with them.
    let last = read_all(&scraped).await;
    let summary_rows = rows(&scraped, &last, &baseline);
    Ending::Finished(summary(stopped_by, ran_for, args.rps, &totals, &summary_rows))
}

/// A sidecar to scrape, and which of its series describe its workload.
struct ScrapeTarget {
    workload: &'static str,
    admin: HttpClient,
    /// The `target` label of the sidecar's inbound series: its app's address.
    inbound_target: Option<String>,
}

impl ScrapeTarget {
    fn new(sidecar: &Sidecar) -> Self {
        Self {
            workload: sidecar.config.workload,
            admin: HttpClient::new(sidecar.config.admin, SCRAPE_TIMEOUT),
            inbound_target: sidecar.config.inbound.as_ref().map(|i| i.app.to_string()),
        }
    }
}

/// Scrapes every sidecar; one failing does not hide the others.
async fn read_all(scraped: &[ScrapeTarget]) -> Vec<Result<Reading, String>> {
    let mut readings = Vec::with_capacity(scraped.len());
    for s in scraped {
        let reading = metrics::scrape(&s.admin).await.map(|scrape: Scrape| {
            Reading::from_scrape(&scrape, s.inbound_target.as_deref(), std::time::Instant::now())
        });
        readings.push(reading);
    }
    readings
}

fn rows<'a>(
    scraped: &'a [ScrapeTarget],
    now: &[Result<Reading, String>],
    earlier: &[Reading],
) -> Vec<Row<'a>> {
    scraped
        .iter()
        .zip(now.iter().zip(earlier))
        .map(|(s, (now, earlier))| Row {
            workload: s.workload,
            serves: s.inbound_target.is_some(),
            period: now.as_ref().map(|now| now.since(earlier)).map_err(Clone::clone),
        })
        .collect()
}

fn introduction(mesh: &Mesh, args: &DemoArgs, workdir: &Path) -> String {
    let mut out = format!(
        "tarmac demo: a service mesh on 127.0.0.1, in explicit mode (no root, nothing installed).\n\
         \n\
         \x20 traffic ──▶ web ──▶ books\n\
         \x20                └──▶ authors\n\
         \n\
         Three sample services run in this process; web answers each request by calling books\n\
         and authors. Each has its own tarmac-proxy sidecar (a separate process) that carries\n\
         its traffic and measures it; sidecars talk to each other over shared HTTP/2\n\
         connections. A traffic client sends {} requests/s to web through a sidecar of its own.\n\
         \n\
         {:<9} {:<17} {:<10} {}\n",
        args.rps, "WORKLOAD", "APP", "SIDECAR", "SIDECAR METRICS"
    );
    for sidecar in &mesh.sidecars {
        let app =
            sidecar.config.inbound.as_ref().map_or_else(|| "(client)".to_string(), |i| i.app.to_string());
        out.push_str(&format!(
            "{:<9} {:<17} {:<10} http://{}/metrics\n",
            sidecar.config.workload,
            app,
            format!("pid {}", sidecar.pid),
            sidecar.config.admin
        ));
    }
    out.push_str(&format!(
        "\nSidecar configs and logs: {} (removed on exit).\n\
         Every {}s: each service's golden metrics over the last {}s, measured by its sidecar on\n\
         the inbound side, and what each sidecar costs. ",
        workdir.display(),
        REFRESH.as_secs(),
        REFRESH.as_secs()
    ));
    out.push_str(&match args.run_for {
        Some(run_for) => format!("Running for {} (Ctrl-C stops earlier).", report::seconds(run_for)),
        None => "Running until Ctrl-C.".to_string(),
    });
    // A blank line before the first table, as between tables.
    out.push('\n');
    out
}

fn summary(
    stopped_by: &str,
    ran_for: Duration,
    rps: u32,
    totals: &TrafficTotals,
    rows: &[Row<'_>],
) -> String {
    let why = match stopped_by {
        "--for" => "as asked with --for".to_string(),
        signal => format!("stopped by {signal}"),
    };
    let mut out =
        format!("Summary of the whole run: traffic ran for {:.1}s ({why}).\n\n", ran_for.as_secs_f64());
    out.push_str(&report::summary_table(rows));
    out.push_str(&format!(
        "\nThe traffic client sent {} requests at {rps}/s: {} succeeded, {} failed",
        totals.sent, totals.succeeded, totals.failed
    ));
    if totals.skipped > 0 {
        out.push_str(&format!(", {} not sent because web was not keeping up", totals.skipped));
    }
    out.push('.');
    out
}

/// Ctrl-C and SIGTERM, either of which ends the demo.
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    fn install() -> Result<Self, String> {
        let install = |kind| signal(kind).map_err(|e| format!("cannot handle signals: {e}"));
        Ok(Self {
            interrupt: install(SignalKind::interrupt())?,
            terminate: install(SignalKind::terminate())?,
        })
    }

    /// Waits for one; returns its name for the user.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "Ctrl-C",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

async fn bind_loopback() -> Result<TcpListener, String> {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        demo: DemoArgs,
    }

    #[test]
    fn arguments_have_defaults_and_check_their_values() {
        let args = Cli::try_parse_from(["demo"]).unwrap().demo;
        assert_eq!((args.run_for, args.rps, args.base_port), (None, 50, 0));
        let args =
            Cli::try_parse_from(["demo", "--for", "2m", "--rps", "10", "--base-port", "20000"]).unwrap().demo;
        assert_eq!((args.run_for, args.rps, args.base_port), (Some(Duration::from_secs(120)), 10, 20000));
        for bad in [&["demo", "--for", "0s"][..], &["demo", "--for", "10"], &["demo", "--rps", "0"]] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
