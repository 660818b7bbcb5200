//! `outpost model pack`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use outpost_fleet::card::CardFile;
use outpost_fleet::clock;
use outpost_fleet::pack::{self, DEFAULT_GOLDEN, PackError, PackRequest, ReferenceData};
use outpost_protocol::bytes::Sha256;

use super::{classify, emit};

#[derive(Debug, clap::Args)]
pub(crate) struct PackArgs {
    /// The ONNX model.
    #[arg(long)]
    model: PathBuf,
    /// The model card (TOML; see fleet-server/examples/card.toml).
    #[arg(long)]
    card: PathBuf,
    /// Reference data: a CSV with a header row, or a 2-D .npy (rows × features).
    #[arg(long)]
    reference: PathBuf,
    /// A labelled evaluation set: .npz with one array per model input and `labels`.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Reference rows kept as the golden self-test (0: none).
    #[arg(long, default_value_t = DEFAULT_GOLDEN)]
    golden: usize,
    /// Where to write the package (default: NAME-VERSION.opk).
    #[arg(long, short = 'o')]
    out: Option<PathBuf>,
    /// Package name, when the card has none.
    #[arg(long)]
    name: Option<String>,
    /// Semantic version, when the card has none.
    #[arg(long = "version", value_name = "VERSION")]
    model_version: Option<String>,
    /// Leave out the pre-optimized form (devices then load the ONNX model).
    #[arg(long)]
    no_preoptimized: bool,
}

fn read(path: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| {
        classify(
            PackError::Io {
                path: path.clone(),
                source,
            },
            true,
        )
    })
}

pub(crate) fn run(args: PackArgs, json: bool) -> Result<()> {
    let card_text = String::from_utf8(read(&args.card)?).map_err(|_| {
        classify(
            PackError::CardSyntax {
                origin: args.card.display().to_string(),
                reason: "not UTF-8 text".into(),
            },
            true,
        )
    })?;
    let card = CardFile::parse(&card_text).map_err(|reason| {
        classify(
            PackError::CardSyntax {
                origin: args.card.display().to_string(),
                reason,
            },
            true,
        )
    })?;
    let reference = ReferenceData::from_file(&args.reference).map_err(|e| {
        let inv = e.is_invalid_input();
        classify(e, inv)
    })?;
    let eval = match &args.eval {
        Some(p) => Some((read(p)?, p.display().to_string())),
        None => None,
    };
    let req = PackRequest {
        onnx: read(&args.model)?,
        onnx_origin: args.model.display().to_string(),
        card,
        reference,
        eval,
        golden: args.golden,
        name: args.name,
        version: args.model_version,
        preoptimize: !args.no_preoptimized,
        created_at: clock::rfc3339(clock::now_unix()),
    };
    let packed = pack::pack(&req).map_err(|e| {
        let inv = e.is_invalid_input();
        classify(e, inv)
    })?;
    let m = &packed.manifest;
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from(format!("{}-{}.opk", m.name, m.version)));
    write_atomically(&out, &packed.bytes)?;
    let sha256 = Sha256::of(&packed.bytes);
    let value = serde_json::json!({
        "ok": true,
        "path": out,
        "name": m.name,
        "version": m.version,
        "sha256": sha256.to_hex(),
        "size": packed.bytes.len(),
        "members": m.members,
        "runtime": m.runtime,
        "reference": {
            "rows": packed.reference_rows,
            "skipped_rows": packed.skipped_rows,
            "columns": packed.reference_columns,
        },
        "golden_rows": packed.golden_rows,
        "notes": packed.notes,
    });
    emit(json, &value, || {
        println!(
            "packed {} {} → {} ({} bytes, sha256 {sha256})",
            m.name,
            m.version,
            out.display(),
            packed.bytes.len()
        );
        for (name, d) in &m.members {
            println!("  {name:<20} {:>10} bytes  {}", d.size, d.sha256);
        }
        println!(
            "reference    {} rows ({} skipped: incomplete or out of range), {} columns",
            packed.reference_rows, packed.skipped_rows, packed.reference_columns
        );
        println!("golden       {} rows", packed.golden_rows);
        if let Some(r) = &m.runtime {
            println!(
                "runtime      tract {}, strategy {}",
                r.tract_version,
                r.strategy.as_deref().unwrap_or("-")
            );
        }
        for n in &packed.notes {
            println!("note         {n}");
        }
    })
}

/// Temporary file beside the target, fsync, rename: a reader never sees a
/// half-written package.
fn write_atomically(path: &PathBuf, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
