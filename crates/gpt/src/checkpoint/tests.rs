//! The checkpoint format's bytes pinned against `safetensors::serialize`, and round trips.

use super::*;
use crate::Gelu;

#[test]
fn f16_decoding() {
    assert_eq!(f16_to_f32(0x3c00), 1.0);
    assert_eq!(f16_to_f32(0xc000), -2.0);
    assert_eq!(f16_to_f32(0x0000), 0.0);
    assert!((f16_to_f32(0x0001) - 5.96e-8).abs() < 1e-9);
}

fn sample_checkpoint(bias: bool, with_optimizer: bool) -> Checkpoint {
    let config = GptConfig {
        n_layer: 11, // h.10 sorts before h.2: the name order is not the layout order
        n_head: 2,
        n_embd: 8,
        block_size: 5,
        vocab_size: 13,
        bias,
        dropout: 0.1,
        gelu: Gelu::Erf,
    };
    let total = ParamLayout::new(&config).total;
    let mut rng = Rng::new(3);
    let mut draw = || {
        (0..total)
            .map(|_| rng.normal() as f32)
            .collect::<Vec<f32>>()
    };
    let params = draw();
    let optimizer = with_optimizer.then(|| (draw(), draw()));
    let progress = with_optimizer.then(|| TrainProgress {
        iter_num: 40,
        best_val_loss: 1.2345678,
        rng: Rng::new(9),
        adam_step: 40,
        adam: AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        },
        train_config: serde_json::json!({"max_iters": 100, "learning_rate": 6e-4}),
    });
    Checkpoint {
        config,
        params,
        optimizer,
        progress,
    }
}

/// What `Checkpoint::to_bytes` returned before writing was streamed: every tensor copied into a
/// byte vector, then `safetensors::serialize` of the lot.
fn reference_bytes(ck: &Checkpoint) -> Vec<u8> {
    #[derive(Serialize)]
    struct OldMeta {
        format: String,
        model_args: GptConfig,
        progress: Option<TrainProgress>,
    }
    let layout = ParamLayout::new(&ck.config);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = layout
        .tensors
        .iter()
        .map(|t| {
            let bytes = ck.params[t.range.clone()]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            (t.name.clone(), t.shape.clone(), bytes)
        })
        .collect();
    if let Some((m, v)) = &ck.optimizer {
        for (name, x) in [(M_NAME, m), (V_NAME, v)] {
            let bytes = x.iter().flat_map(|v| v.to_le_bytes()).collect();
            tensors.push((name.into(), vec![x.len()], bytes));
        }
    }
    let meta = OldMeta {
        format: FORMAT.into(),
        model_args: ck.config.clone(),
        progress: ck.progress.clone(),
    };
    let info = HashMap::from([("pipe".to_string(), serde_json::to_string(&meta).unwrap())]);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, Some(info)).unwrap()
}

#[test]
fn streamed_bytes_equal_the_in_memory_serialization() {
    for (bias, opt) in [(true, true), (false, true), (true, false), (false, false)] {
        let ck = sample_checkpoint(bias, opt);
        let want = reference_bytes(&ck);
        let mut streamed = Vec::new();
        let n = ck.view().write_to(&mut streamed).unwrap();
        assert_eq!(n as usize, want.len());
        assert!(
            streamed == want,
            "bias {bias}, optimizer {opt}: bytes differ"
        );
        assert!(ck.to_bytes().unwrap() == want);
    }
}

#[test]
fn loading_round_trips_and_releases_every_tensor_once() {
    let ck = sample_checkpoint(true, true);
    let bytes = ck.to_bytes().unwrap();
    let released = std::cell::RefCell::new(Vec::new());
    let file = CheckpointFile::parse(&bytes)
        .unwrap()
        .releasing(|r| released.borrow_mut().push(r));
    assert_eq!(file.config, ck.config);
    assert_eq!(file.load(Parts::All).unwrap(), ck);
    let mut ranges = released.take();
    ranges.sort_by_key(|r| r.start);
    // Every tensor byte, each once, and nothing else: the data part of the file.
    let data_start = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(ranges.first().unwrap().start, data_start);
    assert_eq!(ranges.last().unwrap().end, bytes.len());
    assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));

    let model = file.load(Parts::Model).unwrap();
    assert_eq!(model.params, ck.params);
    assert_eq!(model.optimizer, None);
    assert_eq!(model.progress, ck.progress);

    // Tensors handed out for a GPU upload cover the parameter buffer exactly.
    let mut rebuilt = vec![f32::NAN; ck.params.len()];
    file.for_each_param(&mut |r, x| {
        rebuilt[r].copy_from_slice(x);
        Ok(())
    })
    .unwrap();
    assert_eq!(rebuilt, ck.params);

    // A rewrite with the same config is the same file; with another dropout, what loading,
    // changing and saving gives.
    let mut same = Vec::new();
    file.rewrite(&ck.config, &mut same).unwrap();
    assert!(same == bytes);
    let mut other = ck.clone();
    other.config.dropout = 0.0;
    let mut rewritten = Vec::new();
    file.rewrite(&other.config, &mut rewritten).unwrap();
    assert!(rewritten == other.to_bytes().unwrap());
    let no_opt = sample_checkpoint(false, false);
    let b = no_opt.to_bytes().unwrap();
    let mut again = Vec::new();
    CheckpointFile::parse(&b)
        .unwrap()
        .rewrite(&no_opt.config, &mut again)
        .unwrap();
    assert!(again == b);

    assert!(Checkpoint::from_bytes(b"not a checkpoint").is_err());

    // A tensor larger than a piece is read (and released) a piece at a time.
    let big_cfg = GptConfig {
        n_layer: 1,
        n_head: 1,
        n_embd: 64,
        block_size: 4,
        vocab_size: PIECE / 4 / 64 * 2 + 3, // wte: two pieces and a bit
        ..ck.config.clone()
    };
    let total = ParamLayout::new(&big_cfg).total;
    let big = Checkpoint {
        config: big_cfg,
        params: (0..total).map(|i| i as f32).collect(),
        optimizer: None,
        progress: None,
    };
    let bytes = big.to_bytes().unwrap();
    let released = std::cell::RefCell::new(Vec::new());
    let file = CheckpointFile::parse(&bytes)
        .unwrap()
        .releasing(|r| released.borrow_mut().push(r));
    assert_eq!(file.params().unwrap(), big.params);
    let mut ranges = released.take();
    assert!(ranges.iter().all(|r| r.len() <= PIECE));
    ranges.sort_by_key(|r| r.start);
    assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
    assert_eq!(ranges.last().unwrap().end, bytes.len());
    assert!(ranges.len() >= 3 + 4);
    let mut pieces = 0;
    file.for_each_param(&mut |r, x| {
        assert!(r.len() * 4 <= PIECE);
        assert_eq!(&big.params[r], x);
        pieces += 1;
        Ok(())
    })
    .unwrap();
    assert!(pieces >= 3 + 4);

    let mut ck2 = ck.clone();
    let opt = ck2.take_optimizer(AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    });
    assert_eq!((opt.m, opt.v), ck.optimizer.clone().unwrap());
    assert_eq!(opt.step, 40);
}
