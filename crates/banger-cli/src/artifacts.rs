//! `banger image ...`, `banger kernel ...` and `banger internal make-bundle`.

use std::io::Write;

use banger_api::Route;
use banger_api::types::{Image, RegisterImage};
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
            let prefix = ctx.ui.paint_err(Style::Dim, "[image bootstrap]");
            let mut err = std::io::stderr();
            let img: Image = client
                .stream(
                    Route::ImagesBootstrap,
                    &banger_api::types::BootstrapImage {
                        name: b.name.clone(),
                        kernel_ref: b.kernel_ref.clone(),
                        size,
                    },
                    |stage, detail, _| {
                        let (stage, detail) =
                            (escape(stage, Mode::Text), escape(detail, Mode::Text));
                        let _ = writeln!(err, "{prefix} {stage}: {detail}");
                    },
                )
                .await?;
            ctx.ui.line(&format!(
                "built image {} ({})",
                escape(&img.name, Mode::Cell),
                ByteSize(img.rootfs_bytes)
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
            let prefix = ctx.ui.paint_err(Style::Dim, "[image warm]");
            let mut err = std::io::stderr();
            let img: Image = client
                .stream(
                    Route::ImageWarm(&w.reference),
                    &banger_api::types::WarmImage {
                        cpus: w.cpus,
                        memory_mib,
                        vmm,
                    },
                    |stage, detail, _| {
                        let (stage, detail) =
                            (escape(stage, Mode::Text), escape(detail, Mode::Text));
                        let _ = writeln!(err, "{prefix} {stage}: {detail}");
                    },
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

pub async fn kernel(cmd: crate::args::KernelCommand, ctx: &mut Ctx) -> Result<u8, CliError> {
    use crate::args::KernelCommand as K;
    use banger_api::types::{ImportKernel, Kernel};
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
