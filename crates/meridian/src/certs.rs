//! `meridian certs`: the relay mesh CA and one certificate per region (dev use).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

/// `meridian certs` options.
#[derive(clap::Args, Debug)]
pub struct CertsArgs {
    /// Output directory (ca.pem, ca.key.pem, <region>.cert.pem, <region>.key.pem).
    #[arg(long)]
    out: PathBuf,
    /// The region catalogue whose regions get certificates.
    #[arg(long, default_value = "regions")]
    regions: PathBuf,
    /// Region names instead of a catalogue (comma-separated).
    #[arg(long, value_delimiter = ',')]
    regions_list: Vec<String>,
    /// Replace existing files (a new CA invalidates every earlier certificate).
    #[arg(long)]
    force: bool,
}

/// Writes the files and prints where they are.
pub fn run(args: CertsArgs) -> Result<()> {
    let CertsArgs {
        out,
        regions,
        regions_list,
        force,
    } = args;
    let names: Vec<String> = if regions_list.is_empty() {
        meridian_catalogue::load_dir(&regions)
            .with_context(|| {
                format!(
                    "reading the catalogue {} (or name the regions with --regions-list)",
                    regions.display()
                )
            })?
            .keys()
            .cloned()
            .collect()
    } else {
        regions_list
    };
    if names.is_empty() {
        bail!("no regions: the catalogue is empty; name them with --regions-list");
    }
    interregion_relay::certs::generate_dev_mesh(names.iter().map(String::as_str), &out, force)
        .with_context(|| format!("writing certificates to {}", out.display()))?;
    println!("mesh CA: {}", out.join("ca.pem").display());
    for name in &names {
        println!(
            "{name}: {} {}",
            out.join(interregion_relay::certs::region_cert_file(name))
                .display(),
            out.join(interregion_relay::certs::region_key_file(name))
                .display()
        );
    }
    Ok(())
}
