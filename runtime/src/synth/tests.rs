//! End-to-end tests: write `tiny` models, load them with llama.cpp, tokenize, template, decode.

use std::error::Error;
use std::fs;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use sha2::{Digest, Sha256};

use super::*;

type TestResult = Result<(), Box<dyn Error>>;

const PROMPT: &str = "Hello world, what is the capital of France?";

use crate::engine::backend;

fn synth(dir: &Path, name: &str, quant: Quant, seed: u64, threads: usize) -> Result<SynthReport, SynthError> {
    backend(); // routes llama.cpp's log (the quantizer's too) away from the test output
    synthesize(&SynthOptions { preset: Preset::Tiny, quant, seed, out: dir.join(name), threads })
}

fn sha256(path: &Path) -> Result<Vec<u8>, Box<dyn Error>> {
    Ok(Sha256::digest(fs::read(path)?).to_vec())
}

/// Files in `dir` other than `keep` (leftover temporaries).
fn other_files(dir: &Path, keep: &[&str]) -> Result<Vec<PathBuf>, Box<dyn Error>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !keep.contains(&name) {
            found.push(path);
        }
    }
    Ok(found)
}

/// Loads `path` and runs the checks every synthetic model must pass.
fn check_model(path: &Path, expected_file_type: &str) -> TestResult {
    let dims = Preset::Tiny.dims();
    let model = LlamaModel::load_from_file(backend(), path, &LlamaModelParams::default())?;
    assert_eq!(model.n_vocab(), dims.n_vocab as i32);
    assert_eq!(model.n_embd(), dims.n_embd as i32);
    assert_eq!(model.n_layer(), dims.n_layer);
    assert_eq!(model.n_head(), dims.n_head);
    assert_eq!(model.n_head_kv(), dims.n_head_kv);
    assert_eq!(model.n_ctx_train(), dims.n_ctx_train);
    assert_eq!(model.meta_val_str("general.architecture")?, "llama");
    assert_eq!(model.meta_val_str("general.file_type")?, expected_file_type);
    assert_eq!(model.meta_val_str("outpost.synth.preset")?, "tiny");

    // Tokenizer: listed words are single tokens, and text round-trips.
    let vocab = model.vocab();
    let tokens = vocab.tokenize(PROMPT.as_bytes(), false, false);
    let pieces: Vec<String> = tokens
        .iter()
        .map(|&t| vocab.text(t).map(|s| s.to_string_lossy().into_owned()))
        .collect::<Option<_>>()
        .ok_or("token without text")?;
    assert_eq!(pieces, ["▁Hello", "▁world", ",", "▁what", "▁is", "▁the", "▁capital", "▁of", "▁France", "?"]);
    assert_eq!(vocab.detokenize(&tokens, false, false), PROMPT.as_bytes());
    let odd = "naïve Zürich 🦀 xyzzy\ttabs\nnewline";
    let odd_tokens = vocab.tokenize(odd.as_bytes(), false, false);
    assert_eq!(vocab.detokenize(&odd_tokens, false, false), odd.as_bytes());
    let with_bos = vocab.tokenize(PROMPT.as_bytes(), true, false);
    assert_eq!(with_bos[0], vocab.bos());
    assert_eq!(vocab.eos(), LlamaToken(vocab::EOS_ID as i32));
    assert!(vocab.is_eog(LlamaToken(2)), "</s> must end generation too");

    // Chat template.
    let template = model.chat_template(None)?;
    let message = LlamaChatMessage::new("user".into(), PROMPT.into())?;
    let chat = model.apply_chat_template(&template, &[message], true)?;
    assert_eq!(chat, format!("<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"));
    let chat_tokens = vocab.tokenize(chat.as_bytes(), true, true);
    assert_eq!(chat_tokens[..2], [vocab.bos(), LlamaToken(3)], "<s><|im_start|>");
    assert!(chat_tokens.contains(&vocab.eos()));

    // Decode the prompt and greedily sample a few tokens.
    let generated = generate(&model, &chat_tokens)?;
    assert!(!generated.is_empty());
    Ok(())
}

/// Tokens generated per model in the tests.
const N_GENERATE: usize = 8;

/// Checks one row of logits.
fn check_logits(logits: &[f32]) -> Result<(), String> {
    if logits.len() != Preset::Tiny.dims().n_vocab as usize {
        return Err(format!("{} logits", logits.len()));
    }
    if !logits.iter().all(|l| l.is_finite()) {
        return Err("non-finite logits".into());
    }
    if logits.iter().all(|&l| l == logits[0]) {
        return Err("constant logits".into());
    }
    Ok(())
}

/// Decodes `prompt` and greedily generates up to [`N_GENERATE`] tokens (llama-cpp-2 API).
fn generate(model: &LlamaModel, prompt: &[LlamaToken]) -> Result<Vec<LlamaToken>, Box<dyn Error>> {
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(256))
        .with_n_batch(256)
        .with_n_threads(2)
        .with_n_threads_batch(2);
    let mut ctx = model.new_context(backend(), params)?;
    let mut batch = LlamaBatch::new(256, 1);
    batch.add_sequence(prompt, 0, false)?;
    ctx.decode(&mut batch)?;
    let mut sampler = LlamaSampler::greedy();
    let mut generated = Vec::new();
    for pos in (i32::try_from(prompt.len())?..).take(N_GENERATE) {
        let last = batch.n_tokens() - 1;
        check_logits(ctx.get_logits_ith(last))?;
        let token = sampler.sample(&ctx, last);
        generated.push(token);
        if model.vocab().is_eog(token) {
            break;
        }
        batch.clear();
        batch.add(token, pos, &[0], true)?;
        ctx.decode(&mut batch)?;
    }
    Ok(generated)
}

#[test]
fn tiny_f16_loads_tokenizes_and_generates() -> TestResult {
    let dir = tempfile::tempdir()?;
    let report = synth(dir.path(), "tiny-f16.gguf", Quant::F16, 1, 2)?;
    assert_eq!(report.path, dir.path().join("tiny-f16.gguf"));
    assert_eq!(report.bytes, fs::metadata(&report.path)?.len());
    assert_eq!(report.n_vocab, 8192);
    assert_eq!(report.quantize_time, None);
    let infos: Vec<_> = weights::plan(&report.dims).into_iter().map(|s| s.info).collect();
    let kv = metadata(
        &SynthOptions {
            preset: Preset::Tiny,
            quant: Quant::F16,
            seed: 1,
            out: report.path.clone(),
            threads: 1,
        },
        &report.dims,
        &vocab::build(report.n_vocab),
    );
    assert_eq!(report.bytes, gguf::file_size(&kv, &infos));
    // The shared reader (the updater's and `validate`'s) sees what was written.
    let header = outpost_common::gguf::read_header(&report.path)?;
    assert_eq!(header.architecture(), Some("llama"));
    assert_eq!(header.tensors.len(), infos.len());
    assert_eq!(header.file_size, report.bytes);
    let data: u64 = header.tensors.iter().map(|t| t.bytes().map_or(0, gguf::pad_to_alignment)).sum();
    assert_eq!(header.data_start + data, report.bytes);
    assert!(other_files(dir.path(), &["tiny-f16.gguf"])?.is_empty());
    check_model(&report.path, "1")
}

#[test]
fn tiny_q4_k_m_loads_and_generates() -> TestResult {
    let dir = tempfile::tempdir()?;
    let f16 = synth(dir.path(), "tiny-f16.gguf", Quant::F16, 1, 2)?;
    let q4 = synth(dir.path(), "tiny-q4.gguf", Quant::Q4KM, 1, 2)?;
    assert!(q4.quantize_time.is_some());
    assert!(q4.bytes < f16.bytes * 2 / 3, "q4_k_m {} vs f16 {}", q4.bytes, f16.bytes);
    // The f16 intermediate is gone.
    assert!(other_files(dir.path(), &["tiny-f16.gguf", "tiny-q4.gguf"])?.is_empty());
    check_model(&q4.path, "15")
}

#[test]
fn tiny_q8_0_loads() -> TestResult {
    let dir = tempfile::tempdir()?;
    let q8 = synth(dir.path(), "tiny-q8.gguf", Quant::Q8_0, 3, 2)?;
    let model = LlamaModel::load_from_file(backend(), &q8.path, &LlamaModelParams::default())?;
    assert_eq!(model.meta_val_str("general.file_type")?, "7");
    Ok(())
}

#[test]
fn same_seed_same_bytes_different_seed_different_bytes() -> TestResult {
    let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let first = synth(a.path(), "m.gguf", Quant::F16, 42, 1)?;
    let again = synth(b.path(), "m.gguf", Quant::F16, 42, 3)?;
    assert_eq!(sha256(&first.path)?, sha256(&again.path)?);
    let other = synth(a.path(), "other.gguf", Quant::F16, 43, 2)?;
    assert_eq!(other.bytes, first.bytes);
    assert_ne!(sha256(&first.path)?, sha256(&other.path)?);

    let q_first = synth(a.path(), "q.gguf", Quant::Q4KM, 42, 1)?;
    let q_again = synth(b.path(), "q.gguf", Quant::Q4KM, 42, 2)?;
    assert_eq!(sha256(&q_first.path)?, sha256(&q_again.path)?);
    Ok(())
}

#[test]
fn failure_leaves_no_files_behind() -> TestResult {
    let dir = tempfile::tempdir()?;
    // The destination is a non-empty directory: everything succeeds except the final rename.
    let blocker = dir.path().join("model.gguf");
    fs::create_dir(&blocker)?;
    fs::write(blocker.join("keep"), b"x")?;
    for quant in [Quant::F16, Quant::Q8_0] {
        let err = synth(dir.path(), "model.gguf", quant, 1, 1).err().ok_or("rename succeeded")?;
        assert!(matches!(err, SynthError::Rename { .. }), "{err:?}");
        assert!(other_files(dir.path(), &["model.gguf"])?.is_empty());
    }
    let err = synthesize(&SynthOptions {
        preset: Preset::Tiny,
        quant: Quant::F16,
        seed: 1,
        out: dir.path().join("sub").join(".."),
        threads: 1,
    })
    .err()
    .ok_or("path without file name accepted")?;
    assert!(matches!(err, SynthError::InvalidPath { .. }), "{err:?}");
    Ok(())
}

#[test]
fn cli_names() {
    use clap::ValueEnum;
    let names = |v: &[Quant]| -> Vec<String> {
        v.iter().filter_map(|q| q.to_possible_value().map(|p| p.get_name().to_owned())).collect()
    };
    assert_eq!(names(Quant::value_variants()), ["f16", "q8_0", "q4_k_m"]);
    for preset in Preset::ALL {
        let value = preset.to_possible_value().map(|p| p.get_name().to_owned());
        assert_eq!(value.as_deref(), Some(preset.name()));
    }
    for quant in Quant::value_variants() {
        assert_eq!(Quant::from_str(quant.name(), false), Ok(*quant));
    }
}
