//! SNAT for pod traffic leaving the VPC (placeholder).

use ipnetwork::Ipv4Network;

#[derive(Debug, Clone)]
pub struct SnatConfig {
    pub vpc_cidrs: Vec<Ipv4Network>,
    pub exclude: Vec<Ipv4Network>,
}

pub fn apply(_cfg: &SnatConfig) -> Result<(), String> {
    Ok(())
}

pub fn remove() -> Result<(), String> {
    Ok(())
}
