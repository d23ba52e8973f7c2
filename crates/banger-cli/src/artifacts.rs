//! `banger image ...`, `banger kernel ...` and `banger internal make-bundle`.

use std::io::Write;

use banger_api::Route;
use banger_api::types::{
    CatalogListing, CatalogState, ExportImage, ExportedImage, Image, PushImage, PushedImage,
    RegisterImage,
};
use banger_core::names::validate_image_name;
use banger_core::size::ByteSize;

use crate::args::ImageCommand;
use crate::error::CliError;
use crate::escape::{Mode, escape};
use crate::ui::{self, Style};
use crate::vm::size_flag;
use crate::{Ctx, connect};

pub async fn image(cmd: ImageCommand, ctx: &mut Ctx) -> Result<u8, CliError> {
    match cmd {
        ImageCommand::Register(r) => {
            validate_image_name(&r.name).map_err(|e| CliError::Usage(e.to_string()))?;
            let abs = |p: &std::path::PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
            let req = RegisterImage {
                name: r.name.clone(),
                rootfs: abs(&r.rootfs),
                kernel: r.kernel.as_ref().map(abs),
                initrd: r.initrd.as_ref().map(abs),
                modules: r.modules.as_ref().map(abs),
                kernel_ref: r.kernel_ref.clone(),
                description: r.description.clone(),
            };
            req.check_kernel_source()
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let (client, _) = connect(ctx).await?;
            let img: Image = client.post_long(Route::Images, &req).await?;
            ctx.ui.line(&format!(
                "registered image {} ({})",
                escape(&img.name, Mode::Cell),
                ByteSize(img.rootfs_bytes)
            ))?;
            Ok(0)
        }
        ImageCommand::List(j) if j.available => {
            let (client, _) = connect(ctx).await?;
            let listing: CatalogListing = client.get(Route::Catalog).await?;
            if j.json {
                ctx.ui.json(&listing.images)?;
            } else {
                let rows: Vec<Vec<String>> = listing
                    .images
                    .iter()
                    .map(|i| {
                        vec![
                            i.name.clone(),
                            state_word(i.state).into(),
                            ByteSize(i.size).to_string(),
                            i.arch.clone(),
                            i.kernel_ref.clone(),
                            i.description.clone(),
                        ]
                    })
                    .collect();
                let text = ui::table(
                    &["NAME", "STATE", "SIZE", "ARCH", "KERNEL", "DESCRIPTION"],
                    &rows,
                );
                ctx.ui.out().write_all(text.as_bytes())?;
            }
            Ok(0)
        }
        ImageCommand::List(j) => {
            let (client, _) = connect(ctx).await?;
            let imgs: Vec<Image> = client.get(Route::Images).await?;
            if j.json {
                ctx.ui.json(&imgs)?;
            } else {
                let rows: Vec<Vec<String>> = imgs
                    .iter()
                    .map(|i| {
                        vec![
                            i.name.clone(),
                            i.id[..12.min(i.id.len())].to_string(),
                            ByteSize(i.rootfs_bytes).to_string(),
                            i.kernel_ref.clone().unwrap_or_else(|| "(own)".into()),
                            i.used_by.len().to_string(),
                            i.created_at.clone(),
                        ]
                    })
                    .collect();
                let text = ui::table(
                    &["NAME", "ID", "ROOTFS SIZE", "KERNEL", "VMS", "CREATED"],
                    &rows,
                );
                ctx.ui.out().write_all(text.as_bytes())?;
            }
            Ok(0)
        }
        ImageCommand::Show(r) => {
            let (client, _) = connect(ctx).await?;
            let i: Image = client.get(Route::Image(&r.reference)).await?;
            if r.json {
                ctx.ui.json(&i)?;
            } else {
                let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                let p = |v: &Option<std::path::PathBuf>| {
                    v.as_ref().map_or("-".into(), |p| p.display().to_string())
                };
                let text = ui::key_values(&[
                    ("name", i.name.clone()),
                    ("id", i.id.clone()),
                    (
                        "rootfs",
                        format!("{} ({})", i.rootfs.display(), ByteSize(i.rootfs_bytes)),
                    ),
                    ("kernel", p(&i.kernel)),
                    ("initrd", p(&i.initrd)),
                    ("modules", p(&i.modules)),
                    ("kernel ref", opt(&i.kernel_ref)),
                    ("distro", opt(&i.distro)),
                    ("arch", opt(&i.arch)),
                    ("description", opt(&i.description)),
                    ("init", i.init.to_string()),
                    ("created", i.created_at.clone()),
                    (
                        "used by",
                        if i.used_by.is_empty() {
                            "-".into()
                        } else {
                            i.used_by.join(", ")
                        },
                    ),
                    (
                        "templates",
                        if i.templates.is_empty() {
                            "-".into()
                        } else {
                            i.templates
                                .iter()
                                .map(|t| {
                                    format!(
                                        "{} {} vCPU {} MiB ({} on disk, made {})",
                                        t.vmm,
                                        t.cpus,
                                        t.memory_mib,
                                        ByteSize(t.size_bytes),
                                        t.made_at
                                    )
                                })
                                .collect::<Vec<_>>()
                                .join("; ")
                        },
                    ),
                ]);
                ctx.ui.out().write_all(text.as_bytes())?;
            }
            Ok(0)
        }
        ImageCommand::Bootstrap(b) => {
            validate_image_name(&b.name).map_err(|e| CliError::Usage(e.to_string()))?;
            let size = size_flag("size", &b.size)?;
            let (client, _) = connect(ctx).await?;
            let mut printer = stage_printer(ctx, "[image bootstrap]");
            let img: Image = client
                .stream(
                    Route::ImagesBootstrap,
                    &banger_api::types::BootstrapImage {
                        name: b.name.clone(),
                        kernel_ref: b.kernel_ref.clone(),
                        size,
                    },
                    |stage, detail, _| printer(stage, detail),
                )
                .await?;
            ctx.ui.line(&format!(
                "built image {} ({})",
                escape(&img.name, Mode::Cell),
                ByteSize(img.rootfs_bytes)
            ))?;
            Ok(0)
        }
        ImageCommand::Pull(p) => pull(p, ctx).await,
        ImageCommand::Cache(crate::args::CacheCommand::Prune) => {
            let (client, _) = connect(ctx).await?;
            let pruned: banger_api::types::CachePruned = client
                .post_long(Route::ImagesCachePrune, &serde_json::json!({}))
                .await?;
            for digest in &pruned.removed {
                ctx.ui
                    .line(&format!("removed layer {}", escape(digest, Mode::Text)))?;
            }
            ctx.ui.line(&format!(
                "freed {} ({} layers removed, {} kept)",
                ByteSize(pruned.freed_bytes),
                pruned.removed.len(),
                pruned.kept
            ))?;
            Ok(0)
        }
        ImageCommand::Import(i) => {
            let path = std::path::absolute(&i.bundle).unwrap_or(i.bundle.clone());
            let (client, _) = connect(ctx).await?;
            let img: Image = client
                .post_long(
                    Route::ImagesImport,
                    &banger_api::types::ImportBundle {
                        path,
                        name: i.name.clone(),
                        kernel_ref: i.kernel_ref.clone(),
                    },
                )
                .await?;
            ctx.ui.line(&format!(
                "imported image {} ({})",
                escape(&img.name, Mode::Cell),
                ByteSize(img.rootfs_bytes)
            ))?;
            Ok(0)
        }
        ImageCommand::Export(e) => {
            let out = std::path::absolute(&e.out).unwrap_or(e.out.clone());
            let (client, _) = connect(ctx).await?;
            let mut printer = stage_printer(ctx, "[image export]");
            let done: ExportedImage = client
                .stream(
                    Route::ImageExport(&e.reference),
                    &ExportImage { out },
                    |stage, detail, _| printer(stage, detail),
                )
                .await?;
            let text = ui::key_values(&[
                ("bundle", done.bundle.display().to_string()),
                ("catalog", done.catalog.display().to_string()),
                ("sha256", done.sha256.clone()),
                (
                    "size",
                    format!("{} ({} bytes)", ByteSize(done.size), done.size),
                ),
            ]);
            ctx.ui.out().write_all(text.as_bytes())?;
            Ok(0)
        }
        ImageCommand::Push(p) => {
            let (client, _) = connect(ctx).await?;
            let mut printer = stage_printer(ctx, "[image push]");
            let done: PushedImage = client
                .stream(
                    Route::ImagePush(&p.name),
                    &PushImage {
                        reference: p.reference.clone(),
                    },
                    |stage, detail, _| printer(stage, detail),
                )
                .await?;
            let text = ui::key_values(&[
                ("reference", done.reference.clone()),
                ("manifest", done.manifest_url.clone()),
                ("bundle", done.bundle_digest.clone()),
                (
                    "size",
                    format!("{} ({} bytes)", ByteSize(done.size), done.size),
                ),
            ]);
            ctx.ui.out().write_all(text.as_bytes())?;
            Ok(0)
        }
        ImageCommand::Warm(w) => {
            let vmm = w
                .vmm
                .as_deref()
                .map(|v| {
                    v.parse::<banger_core::vmm_kind::VmmKind>()
                        .map_err(|e| CliError::Usage(format!("--vmm: {e}")))
                })
                .transpose()?;
            let memory_mib = crate::vm::memory_flag(&w.memory)?
                .map(|m| {
                    u64::try_from(m)
                        .map_err(|_| CliError::Usage("--memory: must be positive".into()))
                })
                .transpose()?;
            if w.cpus == Some(0) {
                return Err(CliError::Usage("--cpus: must be at least 1".into()));
            }
            let (client, _) = connect(ctx).await?;
            let mut printer = stage_printer(ctx, "[image warm]");
            let img: Image = client
                .stream(
                    Route::ImageWarm(&w.reference),
                    &banger_api::types::WarmImage {
                        cpus: w.cpus,
                        memory_mib,
                        vmm,
                    },
                    |stage, detail, _| printer(stage, detail),
                )
                .await?;
            ctx.ui.line(&format!(
                "warm-start template of {} ready",
                escape(&img.name, Mode::Cell)
            ))?;
            Ok(0)
        }
        ImageCommand::Delete(r) => {
            let (client, _) = connect(ctx).await?;
            let _: serde_json::Value = client.delete(Route::Image(&r.reference)).await?;
            ctx.ui.line(&format!("deleted image {}", r.reference))?;
            Ok(0)
        }
    }
}

/// An `--init` flag's value.
fn parse_init(init: Option<&str>) -> Result<Option<banger_core::guest_init::GuestInit>, CliError> {
    init.map(str::parse)
        .transpose()
        .map_err(|e: banger_core::guest_init::ParseGuestInitError| CliError::Usage(e.to_string()))
}

/// The word `list --available` prints for a catalog entry's state.
fn state_word(state: CatalogState) -> &'static str {
    match state {
        CatalogState::Pulled => "pulled",
        CatalogState::Available => "available",
    }
}

/// Prints a streamed operation's stages on stderr, escaped, dimmed `label` first.
pub(crate) fn stage_printer(ctx: &Ctx, label: &str) -> impl FnMut(&str, &str) + use<> {
    let prefix = ctx.ui.paint_err(Style::Dim, label);
    let mut err = std::io::stderr();
    move |stage, detail| {
        let (stage, detail) = (escape(stage, Mode::Text), escape(detail, Mode::Text));
        let _ = writeln!(err, "{prefix} {stage}: {detail}");
    }
}

/// `image pull`: the stages on stderr (a terminal redraws each layer's download line in
/// place; elsewhere only its finished line is printed), the image on stdout.
async fn pull(p: crate::args::PullArgs, ctx: &mut Ctx) -> Result<u8, CliError> {
    use std::io::IsTerminal;
    if let Some(n) = &p.name {
        validate_image_name(n).map_err(|e| CliError::Usage(e.to_string()))?;
    }
    let size = size_flag("size", &p.size)?;
    let abs = |p: &std::path::PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
    let req = banger_api::types::PullImage {
        reference: p.reference.clone(),
        name: p.name.clone(),
        kernel_ref: p.kernel_ref.clone(),
        kernel: p.kernel.as_ref().map(abs),
        initrd: p.initrd.as_ref().map(abs),
        modules: p.modules.as_ref().map(abs),
        size,
        init: parse_init(p.init.as_deref())?,
    };
    req.check_kernel_source()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let (client, _) = connect(ctx).await?;
    let prefix = ctx.ui.paint_err(Style::Dim, "[image pull]");
    let mut err = std::io::stderr();
    let tty = err.is_terminal();
    let mut redrawing = false;
    let img: Result<Image, _> = client
        .stream(Route::ImagesPull, &req, |stage, detail, _| {
            let (stage, detail) = (escape(stage, Mode::Text), escape(detail, Mode::Text));
            if stage == "download" {
                if tty {
                    let _ = write!(err, "\r\x1b[2K{prefix} {stage}: {detail}");
                    let _ = err.flush();
                    redrawing = true;
                }
                return;
            }
            if redrawing {
                let _ = write!(err, "\r\x1b[2K");
                redrawing = false;
            }
            let _ = writeln!(err, "{prefix} {stage}: {detail}");
        })
        .await;
    if redrawing {
        let _ = writeln!(err);
    }
    let img = img?;
    ctx.ui.line(&format!(
        "pulled image {} ({})",
        escape(&img.name, Mode::Cell),
        ByteSize(img.rootfs_bytes)
    ))?;
    Ok(0)
}

pub async fn kernel(cmd: crate::args::KernelCommand, ctx: &mut Ctx) -> Result<u8, CliError> {
    use crate::args::KernelCommand as K;
    use banger_api::types::{ImportKernel, Kernel, PullKernel};
    match cmd {
        K::Import(a) => {
            banger_core::names::validate_kernel_name(&a.name)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let from = std::path::absolute(&a.from).unwrap_or(a.from.clone());
            let (client, _) = connect(ctx).await?;
            let k: Kernel = client
                .post_long(
                    Route::Kernels,
                    &ImportKernel {
                        name: a.name.clone(),
                        from,
                        version: a.kernel_version.clone(),
                        force: a.force,
                    },
                )
                .await?;
            ctx.ui
                .line(&format!("imported kernel {} ({})", k.name, k.version))?;
            Ok(0)
        }
        K::List(j) if j.available => {
            let (client, _) = connect(ctx).await?;
            let listing: CatalogListing = client.get(Route::Catalog).await?;
            if j.json {
                ctx.ui.json(&listing.kernels)?;
            } else {
                let rows: Vec<Vec<String>> = listing
                    .kernels
                    .iter()
                    .map(|k| {
                        vec![
                            k.name.clone(),
                            state_word(k.state).into(),
                            ByteSize(k.size).to_string(),
                            k.arch.clone(),
                            k.description.clone(),
                        ]
                    })
                    .collect();
                let text = ui::table(&["NAME", "STATE", "SIZE", "ARCH", "DESCRIPTION"], &rows);
                ctx.ui.out().write_all(text.as_bytes())?;
            }
            Ok(0)
        }
        K::Pull(p) => {
            banger_core::names::validate_kernel_name(&p.name)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let (client, _) = connect(ctx).await?;
            let mut printer = stage_printer(ctx, "[kernel pull]");
            let k: Kernel = client
                .stream(
                    Route::KernelsPull,
                    &PullKernel {
                        name: p.name.clone(),
                        force: p.force,
                    },
                    |stage, detail, _| printer(stage, detail),
                )
                .await?;
            ctx.ui.line(&format!(
                "pulled kernel {} ({})",
                escape(&k.name, Mode::Cell),
                escape(&k.version, Mode::Cell)
            ))?;
            Ok(0)
        }
        K::List(j) => {
            let (client, _) = connect(ctx).await?;
            let ks: Vec<Kernel> = client.get(Route::Kernels).await?;
            if j.json {
                ctx.ui.json(&ks)?;
            } else {
                let rows: Vec<Vec<String>> = ks
                    .iter()
                    .map(|k| {
                        vec![
                            k.name.clone(),
                            k.version.clone(),
                            if k.initrd.is_some() { "yes" } else { "no" }.into(),
                            if k.modules.is_some() { "yes" } else { "no" }.into(),
                            if k.used_by.is_empty() {
                                "-".into()
                            } else {
                                k.used_by.join(",")
                            },
                            k.created_at.clone(),
                        ]
                    })
                    .collect();
                let text = ui::table(
                    &["NAME", "VERSION", "INITRD", "MODULES", "IMAGES", "IMPORTED"],
                    &rows,
                );
                ctx.ui.out().write_all(text.as_bytes())?;
            }
            Ok(0)
        }
        K::Show(r) => {
            let (client, _) = connect(ctx).await?;
            let k: Kernel = client.get(Route::Kernel(&r.name)).await?;
            if r.json {
                ctx.ui.json(&k)?;
            } else {
                let p = |v: &Option<std::path::PathBuf>| {
                    v.as_ref().map_or("-".into(), |p| p.display().to_string())
                };
                let text = ui::key_values(&[
                    ("name", k.name.clone()),
                    ("version", k.version.clone()),
                    ("vmlinux", p(&k.vmlinux)),
                    ("vmlinuz", p(&k.vmlinuz)),
                    ("initrd", p(&k.initrd)),
                    ("modules", p(&k.modules)),
                    ("sha256", k.sha256.clone()),
                    ("source", k.source.clone()),
                    ("imported", k.created_at.clone()),
                    (
                        "used by",
                        if k.used_by.is_empty() {
                            "-".into()
                        } else {
                            k.used_by.join(", ")
                        },
                    ),
                ]);
                ctx.ui.out().write_all(text.as_bytes())?;
            }
            Ok(0)
        }
        K::Rm(n) => {
            let (client, _) = connect(ctx).await?;
            let _: serde_json::Value = client.delete(Route::Kernel(&n.name)).await?;
            ctx.ui.line(&format!("removed kernel {}", n.name))?;
            Ok(0)
        }
    }
}

/// `banger internal make-bundle`: runs the image builder in this process.
pub fn make_bundle(a: crate::args::MakeBundleArgs, ctx: &mut Ctx) -> Result<u8, CliError> {
    use banger_image::flatten::TarInput;
    validate_image_name(&a.name).map_err(|e| CliError::Usage(e.to_string()))?;
    let size = size_flag("size", &a.size)?;
    let input = if a.rootfs_tar == "-" {
        TarInput::Reader {
            name: "stdin".into(),
            reader: Box::new(std::io::stdin()),
        }
    } else {
        TarInput::Path(a.rootfs_tar.clone().into())
    };
    let agent = ctx.env.agent().ok_or_else(|| {
        CliError::Usage("cannot find the banger-agent binary (set BANGER_AGENT_BIN)".into())
    })?;
    banger_core::probe::check_agent(&agent).map_err(CliError::Agent)?;
    std::fs::create_dir_all(&a.out).map_err(|source| CliError::Dir {
        path: a.out.clone(),
        source,
    })?;
    let req = banger_image::bundle::MakeBundle {
        rootfs_tars: vec![input],
        name: a.name.clone(),
        distro: a.distro.clone(),
        arch: a.arch.clone(),
        kernel_ref: a.kernel_ref.clone(),
        description: a.description.clone().unwrap_or_default(),
        size,
        agent_bin: agent,
        modules_dir: a.modules.clone(),
        init: parse_init(a.init.as_deref())?,
        out_dir: a.out.clone(),
        work_dir: a.out.clone(),
    };
    let runner = banger_core::runner::SystemRunner::new().with_path(
        banger_core::probe::SearchPath::programs(ctx.env.path.as_deref()),
    );
    let mut err = std::io::stderr();
    let info = banger_image::bundle::make_bundle(&runner, req, &mut |m| {
        let _ = writeln!(err, "[make-bundle] {}", escape(m, Mode::Text));
    })
    .map_err(|e| CliError::Bundle(Box::new(e)))?;
    let text = ui::key_values(&[
        ("path", info.path.display().to_string()),
        ("sha256", info.sha256.clone()),
        (
            "size",
            format!("{} ({} bytes)", ByteSize(info.size_bytes), info.size_bytes),
        ),
    ]);
    ctx.ui.out().write_all(text.as_bytes())?;
    Ok(0)
}
