//! Removing everything banger made on the host network, for `banger system uninstall`:
//! every TAP device named [`TAP_PREFIX`]..., banger's bridge and its nftables table
//! [`NAT_TABLE`]. What is already gone is skipped; links of other kinds, even with banger's
//! names, are left alone.

use super::{DirectNetOps, NAT_FAMILY, NAT_TABLE, NetError};
use crate::plan::{TAP_PREFIX, validate_ifname};
use crate::runner::CommandRunner;

impl<R: CommandRunner> DirectNetOps<R> {
    /// Deletes banger's TAPs, bridge `bridge` and nftables table (see the module docs).
    pub fn cleanup(&self, bridge: &str) -> Result<(), NetError> {
        validate_ifname(bridge)?;
        for link in self.links()? {
            let ours_tap = link.ifname.starts_with(TAP_PREFIX) && link.is_tap();
            let ours_bridge = link.ifname == bridge && link.is_bridge();
            if ours_tap || ours_bridge {
                self.run("ip", &["link", "del", "dev", &link.ifname])?;
            }
        }
        let tables = match self.run("nft", &["list", "tables", NAT_FAMILY]) {
            Ok(out) => out.stdout,
            // Without nft, banger cannot have made a table.
            Err(NetError::Spawn(e)) if e.source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let ours = format!("table {NAT_FAMILY} {NAT_TABLE}");
        if tables.lines().any(|l| l.trim() == ours) {
            self.run("nft", &["delete", "table", NAT_FAMILY, NAT_TABLE])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::fake::{FakeRunner, Reply};

    const LINKS: &str = "ip -d -j link show";

    fn link(name: &str, kind: &str) -> String {
        let data = if kind == "tun" {
            r#","info_data":{"type":"tap","persist":true}"#
        } else {
            ""
        };
        format!(r#"{{"ifname":"{name}","flags":[],"linkinfo":{{"info_kind":"{kind}"{data}}}}}"#)
    }

    #[test]
    fn removes_banger_s_taps_bridge_and_table_only() {
        let fake = FakeRunner::new();
        let links = [
            link("bgr1", "tun"),
            link("bgr2", "tun"),
            link("bgrveth", "veth"),
            link("tap0", "tun"),
            link("banger0", "bridge"),
            link("docker0", "bridge"),
        ];
        fake.on(LINKS, Reply::Ok(format!("[{}]", links.join(","))));
        fake.on(
            "nft list tables ip",
            Reply::Ok("table ip filter\ntable ip banger\n".into()),
        );
        let ops = DirectNetOps::new(fake);
        ops.cleanup("banger0").unwrap();
        assert_eq!(
            ops.runner().calls(),
            [
                LINKS,
                "ip link del dev bgr1",
                "ip link del dev bgr2",
                "ip link del dev banger0",
                "nft list tables ip",
                "nft delete table ip banger",
            ]
        );
    }

    #[test]
    fn a_clean_host_or_one_without_nft_changes_nothing() {
        let fake = FakeRunner::new();
        fake.on(LINKS, Reply::Ok(format!("[{}]", link("eth0", "device"))));
        fake.on("nft list tables ip", Reply::Ok("table ip filter\n".into()));
        let ops = DirectNetOps::new(fake);
        ops.cleanup("banger0").unwrap();
        assert_eq!(ops.runner().calls(), [LINKS, "nft list tables ip"]);
        let fake = FakeRunner::new();
        fake.on(LINKS, Reply::Ok("[]".into()));
        fake.on("nft list tables ip", Reply::NotFound);
        DirectNetOps::new(fake).cleanup("banger0").unwrap();
        assert!(DirectNetOps::new(FakeRunner::new()).cleanup("a b").is_err());
    }
}
