//! Reference data (CSV or `.npy`) read into named numeric columns.

use outpost_runtime::npy;

use super::PackError;

/// Reference data as given: a CSV with a header row, or a 2-D `.npy`.
#[derive(Debug, Clone)]
pub enum ReferenceData {
    Csv { origin: String, bytes: Vec<u8> },
    Npy { origin: String, bytes: Vec<u8> },
}

impl ReferenceData {
    /// Chooses the reader by the file name's extension (`.csv`, `.npy`).
    pub fn from_file(path: &std::path::Path) -> Result<ReferenceData, PackError> {
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| PackError::Io {
            path: path.to_owned(),
            source,
        })?;
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("csv") => Ok(ReferenceData::Csv { origin, bytes }),
            Some(e) if e.eq_ignore_ascii_case("npy") => Ok(ReferenceData::Npy { origin, bytes }),
            _ => Err(PackError::Data {
                origin,
                reason: "reference data must be a .csv or a .npy file".into(),
            }),
        }
    }
}

/// Named columns; `None` is a missing cell (CSV: empty or `NA`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Table {
    pub(crate) names: Vec<String>,
    pub(crate) columns: Vec<Vec<Option<f64>>>,
}

impl Table {
    pub(crate) fn rows(&self) -> usize {
        self.columns.first().map_or(0, Vec::len)
    }
}

/// Reads the data. `wanted` are the feature names the card declares (all
/// inputs, in order), if it declares them: a CSV's columns are picked by
/// those names (other columns, such as a label, are ignored), a `.npy`'s
/// columns are named by them. Without them, a CSV's header names the
/// features and a `.npy`'s columns are `f0…`.
pub(crate) fn read_table(
    data: &ReferenceData,
    wanted: Option<&[String]>,
) -> Result<Table, PackError> {
    match data {
        ReferenceData::Csv { origin, bytes } => read_csv(origin, bytes, wanted),
        ReferenceData::Npy { origin, bytes } => read_npy(origin, bytes, wanted),
    }
}

fn read_csv(origin: &str, bytes: &[u8], wanted: Option<&[String]>) -> Result<Table, PackError> {
    let err = |reason: String| PackError::Data {
        origin: origin.into(),
        reason,
    };
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes);
    let header: Vec<String> = csv
        .headers()
        .map_err(|e| err(e.to_string()))?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    let picks: Vec<usize> = match wanted {
        None => (0..header.len()).collect(),
        Some(names) => {
            let absent: Vec<&str> = names
                .iter()
                .filter(|n| !header.contains(n))
                .map(String::as_str)
                .collect();
            if !absent.is_empty() {
                return Err(err(format!(
                    "the card names features the CSV header lacks: {}",
                    absent.join(", ")
                )));
            }
            names
                .iter()
                .filter_map(|n| header.iter().position(|h| h == n))
                .collect()
        }
    };
    let mut columns: Vec<Vec<Option<f64>>> = vec![Vec::new(); picks.len()];
    for (row, record) in csv.records().enumerate() {
        let record = record.map_err(|e| err(e.to_string()))?;
        for (column, &ix) in columns.iter_mut().zip(&picks) {
            let cell = record.get(ix).unwrap_or("").trim();
            if cell.is_empty() || cell == "NA" {
                column.push(None);
                continue;
            }
            let value = cell.parse::<f64>().map_err(|_| {
                err(format!(
                    "data row {}, column {}: {:?} is not a number",
                    row + 1,
                    header[ix],
                    cell.chars().take(64).collect::<String>()
                ))
            })?;
            column.push(Some(value));
        }
    }
    let names = picks.iter().map(|&i| header[i].clone()).collect();
    Ok(Table { names, columns })
}

fn read_npy(origin: &str, bytes: &[u8], wanted: Option<&[String]>) -> Result<Table, PackError> {
    let err = |reason: String| PackError::Data {
        origin: origin.into(),
        reason,
    };
    let tensor = npy::npy_from_bytes(bytes).map_err(err)?;
    let &[rows, cols] = tensor.shape() else {
        return Err(err(format!(
            "expected a 2-D array (rows × features), got shape {:?}",
            tensor.shape()
        )));
    };
    let values = tensor
        .cast_to::<f64>()
        .map_err(|e| err(e.to_string()))?
        .to_plain_array_view::<f64>()
        .map_err(|e| err(e.to_string()))?
        .iter()
        .copied()
        .collect::<Vec<f64>>();
    let names: Vec<String> = match wanted {
        Some(names) if names.len() != cols => {
            return Err(err(format!(
                "the card names {} features, the array has {cols} columns",
                names.len()
            )));
        }
        Some(names) => names.to_vec(),
        None => (0..cols).map(|j| format!("f{j}")).collect(),
    };
    let columns = (0..cols)
        .map(|j| (0..rows).map(|i| Some(values[i * cols + j])).collect())
        .collect();
    Ok(Table { names, columns })
}
