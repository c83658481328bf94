//! Interception rules: the sidecar's init step.
//!
//! Inside a workload's network namespace, every inbound TCP connection is redirected to the
//! proxy's inbound port and every outbound one to its outbound port, except the proxy's
//! own connections (matched by its uid) and ports the user asks to skip. The proxy then
//! reads the real destination back with `SO_ORIGINAL_DST`. The rules are built as data so
//! that they can be printed, reviewed and tested without root.

use std::process::Command;

/// Chains we own; created fresh on apply so a re-run replaces, never duplicates, rules.
pub const INBOUND_CHAIN: &str = "TARMAC_INBOUND";
pub const OUTBOUND_CHAIN: &str = "TARMAC_OUTBOUND";

/// What to intercept and what to leave alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterceptRules {
    /// Port of the proxy's inbound listener (all interfaces inside the namespace).
    pub inbound_port: u16,
    /// Port of the proxy's transparent outbound listener.
    pub outbound_port: u16,
    /// The uid the proxy runs as; its own outbound connections must not be redirected
    /// back to itself.
    pub proxy_uid: u32,
    /// Inbound destination ports that bypass the proxy (the admin port, for example).
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports that bypass the proxy.
    pub skip_outbound_ports: Vec<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not run `{command}`: {source}; is iptables installed?")]
    Spawn { command: String, source: std::io::Error },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
}

impl InterceptRules {
    /// The `iptables` argument lists, in order, that install the rules in the `nat` table.
    pub fn commands(&self) -> Vec<Vec<String>> {
        let mut rules = Vec::new();
        rules.push(format!("-N {INBOUND_CHAIN}"));
        redirect_except(&mut rules, INBOUND_CHAIN, &self.skip_inbound_ports, self.inbound_port);
        rules.push(format!("-A PREROUTING -p tcp -j {INBOUND_CHAIN}"));

        rules.push(format!("-N {OUTBOUND_CHAIN}"));
        // The proxy's own connections leave as they are: otherwise it would talk to itself.
        rules.push(format!("-A {OUTBOUND_CHAIN} -m owner --uid-owner {} -j RETURN", self.proxy_uid));
        // Traffic inside the namespace (proxy to app, app to its own sidecar) stays put.
        rules.push(format!("-A {OUTBOUND_CHAIN} -o lo -j RETURN"));
        redirect_except(&mut rules, OUTBOUND_CHAIN, &self.skip_outbound_ports, self.outbound_port);
        rules.push(format!("-A OUTPUT -p tcp -j {OUTBOUND_CHAIN}"));

        rules.iter().map(|rule| nat_args(rule)).collect()
    }

    /// The commands as a shell script, for review (`tarmac-proxy init --dry-run`).
    pub fn script(&self, binary: &str) -> String {
        self.commands().iter().map(|args| format!("{binary} {}\n", args.join(" "))).collect()
    }

    /// Installs the rules in the current network namespace with `binary` (`iptables`,
    /// `iptables-legacy`, `ip6tables`, ...). Any earlier Tarmac rules are removed first.
    pub fn apply(&self, binary: &str) -> Result<(), Error> {
        remove(binary);
        for args in self.commands() {
            run(binary, &args)?;
        }
        Ok(())
    }
}

/// Appends to `chain`: skipped ports return, all other TCP goes to `port`.
fn redirect_except(rules: &mut Vec<String>, chain: &str, skip: &[u16], port: u16) {
    for skipped in skip {
        rules.push(format!("-A {chain} -p tcp --dport {skipped} -j RETURN"));
    }
    rules.push(format!("-A {chain} -p tcp -j REDIRECT --to-ports {port}"));
}

/// Removes Tarmac's chains and the jumps to them; missing rules are not an error.
pub fn remove(binary: &str) {
    let rules = [
        format!("-D PREROUTING -p tcp -j {INBOUND_CHAIN}"),
        format!("-D OUTPUT -p tcp -j {OUTBOUND_CHAIN}"),
        format!("-F {INBOUND_CHAIN}"),
        format!("-X {INBOUND_CHAIN}"),
        format!("-F {OUTBOUND_CHAIN}"),
        format!("-X {OUTBOUND_CHAIN}"),
    ];
    for rule in rules {
        let _ = run(binary, &nat_args(&rule));
    }
}

/// `-t nat` and the words of `rule`.
fn nat_args(rule: &str) -> Vec<String> {
    ["-t", "nat"].into_iter().chain(rule.split_whitespace()).map(String::from).collect()
}

fn run(binary: &str, args: &[String]) -> Result<(), Error> {
    let command = format!("{binary} {}", args.join(" "));
    tracing::debug!(%command, "iptables");
    let out = Command::new(binary)
        .args(args)
        .output()
        .map_err(|source| Error::Spawn { command: command.clone(), source })?;
    if !out.status.success() {
        return Err(Error::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> InterceptRules {
        InterceptRules {
            inbound_port: 4143,
            outbound_port: 4140,
            proxy_uid: 2102,
            skip_inbound_ports: vec![4191],
            skip_outbound_ports: vec![443],
        }
    }

    #[test]
    fn proxy_uid_is_exempt_before_the_outbound_redirect() {
        let script = rules().script("iptables");
        let exempt = script.find("--uid-owner 2102 -j RETURN").expect("uid exemption");
        let redirect = script.find("REDIRECT --to-ports 4140").expect("outbound redirect");
        assert!(exempt < redirect, "{script}");
    }

    #[test]
    fn skipped_ports_return_before_redirects() {
        let script = rules().script("iptables");
        let skip_in = script.find("--dport 4191 -j RETURN").unwrap();
        let redirect_in = script.find("REDIRECT --to-ports 4143").unwrap();
        assert!(skip_in < redirect_in);
        let skip_out = script.find("--dport 443 -j RETURN").unwrap();
        let redirect_out = script.find("REDIRECT --to-ports 4140").unwrap();
        assert!(skip_out < redirect_out);
    }

    #[test]
    fn chains_are_hooked_into_prerouting_and_output() {
        let cmds = rules().commands();
        assert!(cmds.iter().any(|c| c.join(" ") == "-t nat -A PREROUTING -p tcp -j TARMAC_INBOUND"));
        assert!(cmds.iter().any(|c| c.join(" ") == "-t nat -A OUTPUT -p tcp -j TARMAC_OUTBOUND"));
    }
}
