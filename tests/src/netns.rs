//! A second "host" for partition tests: a network namespace joined to this one by a veth
//! pair, and iptables rules on that link to cut cluster traffic (gossip and Raft) while the
//! test client can still reach the node's HTTP port and its mock. Needs root; tests skip
//! when it is not available.

use std::process::Command;

fn run(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .status()
        .is_ok_and(|s| s.success())
}

pub struct NetNs {
    pub name: String,
    host_if: String,
    /// This side's address on the link (bind peers here so the namespace can reach them).
    pub host_ip: String,
    /// The namespace's address.
    pub ns_ip: String,
}

impl NetNs {
    /// `None` when namespaces cannot be made here (not root, no `ip`).
    pub fn create(tag: &str) -> Option<Self> {
        let id = std::process::id() % 200 + 20;
        let name = format!("hapax-{}-{tag}", std::process::id());
        let host_if = format!("hx{id}{tag}h");
        let ns_if = format!("hx{id}{tag}n");
        let subnet = 10 + (id % 200);
        let (host_ip, ns_ip) = (format!("10.213.{subnet}.1"), format!("10.213.{subnet}.2"));
        let _ = run(&["ip", "netns", "del", &name]);
        let _ = run(&["ip", "link", "del", &host_if]);
        let ok = run(&["ip", "netns", "add", &name])
            && run(&[
                "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
            ])
            && run(&["ip", "link", "set", &ns_if, "netns", &name])
            && run(&[
                "ip",
                "addr",
                "add",
                &format!("{host_ip}/24"),
                "dev",
                &host_if,
            ])
            && run(&["ip", "link", "set", &host_if, "up"])
            && run(&[
                "ip",
                "netns",
                "exec",
                &name,
                "ip",
                "addr",
                "add",
                &format!("{ns_ip}/24"),
                "dev",
                &ns_if,
            ])
            && run(&[
                "ip", "netns", "exec", &name, "ip", "link", "set", &ns_if, "up",
            ])
            && run(&[
                "ip", "netns", "exec", &name, "ip", "link", "set", "lo", "up",
            ]);
        let ns = Self {
            name,
            host_if,
            host_ip,
            ns_ip,
        };
        ok.then_some(ns)
    }

    fn rules(&self, open_tcp_ports: &str) -> Vec<Vec<String>> {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        vec![
            s(&["INPUT", "-i", &self.host_if, "-p", "udp", "-j", "DROP"]),
            s(&["OUTPUT", "-o", &self.host_if, "-p", "udp", "-j", "DROP"]),
            s(&[
                "INPUT",
                "-i",
                &self.host_if,
                "-p",
                "tcp",
                "-m",
                "multiport",
                "!",
                "--ports",
                open_tcp_ports,
                "-j",
                "DROP",
            ]),
            s(&[
                "OUTPUT",
                "-o",
                &self.host_if,
                "-p",
                "tcp",
                "-m",
                "multiport",
                "!",
                "--ports",
                open_tcp_ports,
                "-j",
                "DROP",
            ]),
        ]
    }

    /// Cuts every UDP and TCP flow over the link except TCP on `open_tcp_ports` (the node's
    /// HTTP port and its mock's, so the test can still observe it). Healed on drop.
    pub fn partition(&self, open_tcp_ports: &[u16]) -> Partition<'_> {
        let ports = open_tcp_ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        for rule in self.rules(&ports) {
            let mut args = vec!["iptables".to_owned(), "-I".to_owned()];
            args.extend(rule);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            assert!(run(&args), "iptables {args:?}");
        }
        Partition { ns: self, ports }
    }
}

pub struct Partition<'a> {
    ns: &'a NetNs,
    ports: String,
}

impl Partition<'_> {
    pub fn heal(self) {}
}

impl Drop for Partition<'_> {
    fn drop(&mut self) {
        for rule in self.ns.rules(&self.ports) {
            let mut args = vec!["iptables".to_owned(), "-D".to_owned()];
            args.extend(rule);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&args);
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        run(&["ip", "link", "del", &self.host_if]);
        run(&["ip", "netns", "del", &self.name]);
    }
}
