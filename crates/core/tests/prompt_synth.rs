//! The prompt builder over thousands of generated contacts: never over
//! budget, drop order respected, excluded refused, hostile marked.
#![cfg(feature = "synth")]

use contact_sync_core::prompt::{
    build_contact_context, build_multi_contact_context, check_contact, ContextField, PromptError,
    PromptFormat, PromptOptions, HOSTILE_WARNING,
};
use contact_sync_core::synth::Generator;

fn opts(max_tokens: usize, format: PromptFormat) -> PromptOptions {
    PromptOptions {
        max_tokens,
        format,
        ..PromptOptions::default()
    }
}

#[test]
fn generated_contacts_fit_every_budget() {
    let mut g = Generator::new(99);
    let mut excluded = 0;
    for i in 0..600u64 {
        let c = g.contact(i);
        let full = opts(100_000, PromptFormat::Text);
        if c.category_code.as_deref() == Some("X") {
            excluded += 1;
            assert_eq!(
                check_contact(&c, &full),
                Err(PromptError::Excluded {
                    contact_id: c.contact_id.clone()
                })
            );
            continue;
        }
        for format in [PromptFormat::Text, PromptFormat::Json] {
            let whole = build_contact_context(&c, &opts(100_000, format)).unwrap();
            assert!(whole.omitted.is_empty());
            let present: Vec<ContextField> = ContextField::DROP_ORDER
                .into_iter()
                .filter(|f| whole.has(*f))
                .collect();
            for max_tokens in [40, 60, 80, 100, 150, 200, 300, 500] {
                match build_contact_context(&c, &opts(max_tokens, format)) {
                    Ok(ctx) => {
                        assert!(
                            ctx.estimated_tokens <= max_tokens,
                            "{i} {format:?} {max_tokens}"
                        );
                        assert_eq!(ctx.omitted, present[..ctx.omitted.len()]);
                        if c.category_code.as_deref() == Some("H") {
                            assert!(ctx.rendered.contains(HOSTILE_WARNING));
                        }
                    }
                    Err(PromptError::BudgetTooSmall { needed, .. }) => {
                        assert!(needed > max_tokens && max_tokens < 150, "{i} {max_tokens}");
                    }
                    Err(e) => panic!("{i}: {e}"),
                }
            }
        }
    }
    assert!(excluded > 0);
}

#[test]
fn generated_lists_share_the_budget() {
    let mut g = Generator::new(5);
    let all: Vec<_> = (0..400u64)
        .map(|i| g.contact(i))
        .filter(|c| check_contact(c, &PromptOptions::default()).is_ok())
        .collect();
    for chunk in all.chunks(23) {
        for format in [PromptFormat::Text, PromptFormat::Json] {
            for max_tokens in [50, 300, 1000, 2000, 4000] {
                let p = build_multi_contact_context(chunk, &opts(max_tokens, format)).unwrap();
                assert!(p.estimated_tokens <= max_tokens, "{format:?} {max_tokens}");
                assert_eq!(p.contacts.len() + p.omitted_contacts.len(), chunk.len());
            }
        }
    }
}
