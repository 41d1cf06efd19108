//! The one place that turns a machine description into a QEMU command line.
//!
//! Everything the lab passes to QEMU is built here, as separate arguments (no
//! shell strings), so that a reader can see the whole machine at once and the
//! unit tests can pin it without starting anything.

pub use pmem_lab_spec::machine::*;
use pmem_lab_spec::size::{ByteSize, GIB};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The files of one VM: what it boots and where its sockets and backing
/// files live. Socket paths must stay under the 108-byte sun_path limit, so
/// they go in a short private temp dir, not in the artifacts tree.
#[derive(Debug, Clone)]
pub struct VmFiles {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub qmp_socket: PathBuf,
    /// A human monitor (HMP) for people: `mce`, `info registers` by hand.
    pub hmp_socket: PathBuf,
    pub agent_socket: PathBuf,
    /// QEMU's gdbstub: the lab's poison model stops vCPUs at loads there.
    pub gdb_socket: PathBuf,
    /// Where the lab's ACPI table logs changes of the platform's error list
    /// (see [`PLATFORM_LOG_PORT`]); machines without the table have none.
    pub platform_log: PathBuf,
    /// One backing file per NVDIMM, in order.
    pub nvdimm_backing: Vec<PathBuf>,
    /// Per CXL device: its persistent capacity and its label storage area.
    pub cxl_backing: Vec<(PathBuf, PathBuf)>,
    /// Restore this VM snapshot state instead of booting (see
    /// [`crate::boot::vm_snapshot`]): QEMU starts with `-incoming defer` and
    /// loads it when told to.
    pub incoming: Option<PathBuf>,
}

impl VmFiles {
    /// Conventional names inside a VM's private directory, with backing
    /// files for `spec`'s memory devices.
    pub fn in_dir(dir: &Path, kernel: &Path, initrd: &Path, spec: &MachineSpec) -> Self {
        VmFiles {
            kernel: kernel.to_path_buf(),
            initrd: initrd.to_path_buf(),
            qmp_socket: dir.join("qmp"),
            hmp_socket: dir.join("hmp"),
            agent_socket: dir.join("agent"),
            gdb_socket: dir.join("gdb"),
            platform_log: dir.join("platform.log"),
            nvdimm_backing: (0..spec.nvdimms.len())
                .map(|i| dir.join(format!("nvdimm{i}")))
                .collect(),
            cxl_backing: (0..spec.cxl.len())
                .map(|i| (dir.join(format!("cxl{i}")), dir.join(format!("cxl{i}-lsa"))))
                .collect(),
            incoming: None,
        }
    }
}

/// The I/O port the lab's ACPI table writes its error-list log to
/// (images/acpi/root-dsm.asl, `LLOG`); an isa-debugcon device there passes
/// the bytes to [`VmFiles::platform_log`]. Free on QEMU's `pc` machine:
/// QEMU's NVDIMM DSM port is 0xa18-0xa1b, SeaBIOS's debug port 0x402.
pub const PLATFORM_LOG_PORT: u16 = 0xa20;

/// The vCPU. Intel: Linux only recovers from uncorrected errors there, and
/// TCG's default vendor is AMD. `max`: 1 GiB pages and ERMS (so the kernel
/// copies with copy_mc_enhanced_fast_string). Family 6 model 106 (Ice
/// Lake-SP, a CPU of the NVDIMM era): QEMU allows `mce -b` (broadcast, which
/// Linux needs with several CPUs) only for family 6 model >= 14 or a family
/// above 6 (target/i386/helper.c), and QEMU 10's `max` reports family 6
/// model 6 where 7.2's reported family 15; and Linux has no machine-check
/// quirk for this model (Skylake-SP, model 85, would set skx_repmov_quirk,
/// arch/x86/kernel/cpu/mce/core.c).
pub const CPU: &str = "max,vendor=GenuineIntel,family=6,model=106";

/// Kernel command line. `panic=-1` with QEMU's `-no-reboot` turns a guest
/// panic into a QEMU exit, so a panicking case can never hang the run.
pub fn kernel_cmdline(spec: &MachineSpec) -> String {
    let mut words: Vec<String> = vec!["console=ttyS0".into(), "panic=-1".into()];
    if spec.nfit_test {
        words.push("pmem_lab.nfit_test=1".into());
    }
    // Tells init to load the CXL drivers (the guest has no udev).
    if !spec.cxl.is_empty() {
        words.push("pmem_lab.cxl=1".into());
    }
    // `memmap=SIZE!AT`: that RAM becomes e820 type 12, legacy pmem.
    words.extend(
        spec.e820_pmem
            .iter()
            .map(|p| format!("memmap={}!{}", ByteSize(p.size), ByteSize(p.at))),
    );
    words.join(" ")
}

/// The full QEMU argument list (without the program name).
///
/// The serial console goes to QEMU's stdout, which the lab reads line by
/// line: that is how a panic is seen the moment it is printed.
pub fn qemu_args(spec: &MachineSpec, accel: Accel, files: &VmFiles) -> Vec<OsString> {
    let mut a = Args::default();
    let machine = if !spec.cxl.is_empty() {
        // CXL host bridges are PCIe expander bridges: q35 only.
        "q35,cxl=on"
    } else if spec.nvdimms.is_empty() {
        "pc"
    } else {
        "pc,nvdimm=on"
    };
    a.push2("-machine", format!("{machine},accel={}", accel.name()));
    a.push2("-cpu", CPU);
    a.push2("-smp", spec.cpus.to_string());
    a.push2("-m", memory_arg(spec));
    a.push(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    a.push2("-kernel", &files.kernel);
    a.push2("-initrd", &files.initrd);
    a.push2("-append", kernel_cmdline(spec));
    a.push2("-chardev", "stdio,id=console,signal=off");
    a.push2("-serial", "chardev:console");
    a.push2("-chardev", listening_socket("qmp", &files.qmp_socket));
    a.push2("-mon", "chardev=qmp,mode=control");
    a.push2("-chardev", listening_socket("hmp", &files.hmp_socket));
    a.push2("-mon", "chardev=hmp,mode=readline");
    a.push2("-device", "virtio-serial-pci,id=vser0");
    a.push2("-chardev", listening_socket("agent", &files.agent_socket));
    a.push2(
        "-device",
        format!(
            "virtserialport,bus=vser0.0,chardev=agent,name={}",
            pmem_lab_proto::PORT_NAME
        ),
    );
    // Always there, idle until the lab connects: the poison model's watch
    // points (see crate::vm::poison).
    a.push2(
        "-gdb",
        format!("unix:{},server=on,wait=off", files.gdb_socket.display()),
    );
    if spec.lab_root_dsm() {
        a.push2(
            "-chardev",
            // append: a restored VM's log goes on from the snapshot's.
            format!(
                "file,id=platform,path={},append=on",
                files.platform_log.display()
            ),
        );
        a.push2(
            "-device",
            format!("isa-debugcon,iobase={PLATFORM_LOG_PORT:#x},chardev=platform"),
        );
    }
    for (i, (nv, backing)) in spec.nvdimms.iter().zip(&files.nvdimm_backing).enumerate() {
        a.push2(
            "-object",
            format!(
                "memory-backend-file,id=mem{i},share=on,mem-path={},size={},align={}",
                backing.display(),
                nv.size,
                nv.align
            ),
        );
        a.push2(
            "-device",
            format!(
                "nvdimm,id=nvdimm{i},memdev=mem{i},label-size={}",
                nv.label_size
            ),
        );
    }
    cxl_args(&mut a, spec, files);
    if files.incoming.is_some() {
        // Wait for migrate-incoming: the migration capabilities must be
        // set first (crate::vm::MIGRATION_CAPABILITIES).
        a.push2("-incoming", "defer");
    }
    a.0
}

/// The CXL topology: one host bridge (`pxb-cxl`, PCI bus 12 so it never
/// meets pcie.0's numbering), one root port per device, a type-3 device with
/// persistent capacity and a label storage area on each, and one fixed
/// memory window (the CEDT's CFMWS) over the bridge, large enough for a
/// region over every device. Device `i` is QOM path
/// `/machine/peripheral/cxl-pmem{i}` (what QMP's cxl-inject-poison takes)
/// with serial number `i + 1` (what the guest's `cxl list` shows).
fn cxl_args(a: &mut Args, spec: &MachineSpec, files: &VmFiles) {
    if spec.cxl.is_empty() {
        return;
    }
    a.push2("-device", "pxb-cxl,bus_nr=12,bus=pcie.0,id=cxl.0");
    for (i, (dev, (mem, lsa))) in spec.cxl.iter().zip(&files.cxl_backing).enumerate() {
        a.push2(
            "-object",
            format!(
                "memory-backend-file,id=cxl-mem{i},share=on,mem-path={},size={}",
                mem.display(),
                dev.size
            ),
        );
        a.push2(
            "-object",
            format!(
                "memory-backend-file,id=cxl-lsa{i},share=on,mem-path={},size={}",
                lsa.display(),
                dev.lsa_size
            ),
        );
        a.push2(
            "-device",
            format!("cxl-rp,port={i},bus=cxl.0,id=cxl-rp{i},chassis=0,slot={i}"),
        );
        a.push2(
            "-device",
            format!(
                "cxl-type3,bus=cxl-rp{i},persistent-memdev=cxl-mem{i},lsa=cxl-lsa{i},id={},sn={}",
                cxl_device_id(i),
                i + 1
            ),
        );
    }
    a.push2(
        "-M",
        format!(
            "cxl-fmw.0.targets.0=cxl.0,cxl-fmw.0.size={}",
            ByteSize(spec.cxl_window())
        ),
    );
}

/// QEMU's id of CXL device `i` (its QOM path is `/machine/peripheral/<id>`).
pub fn cxl_device_id(i: usize) -> String {
    format!("cxl-pmem{i}")
}

/// A unix socket QEMU listens on; `wait=off` so QEMU starts without a client
/// (the lab connects as soon as the socket appears).
fn listening_socket(id: &str, path: &Path) -> String {
    format!("socket,id={id},path={},server=on,wait=off", path.display())
}

/// `-m SIZE[,slots=N,maxmem=M]`: NVDIMMs are memory devices and need slots
/// and room above RAM. Each gets its size rounded up to 1 GiB, which covers
/// the alignment QEMU applies when it places a DIMM.
/// The CXL window needs no slot: QEMU places it above the device-memory
/// area (hw/i386/pc.c).
fn memory_arg(spec: &MachineSpec) -> String {
    if spec.nvdimms.is_empty() {
        return spec.memory.to_string();
    }
    let dimms: u64 = spec
        .nvdimms
        .iter()
        .map(|n| n.size.bytes().div_ceil(GIB) * GIB)
        .sum();
    format!(
        "{},slots={},maxmem={}",
        spec.memory,
        spec.nvdimms.len(),
        ByteSize(spec.memory.bytes() + dimms)
    )
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push<const N: usize>(&mut self, words: [&str; N]) {
        self.0.extend(words.iter().map(OsString::from));
    }
    fn push2(&mut self, flag: &str, value: impl Into<OsString>) {
        self.0.push(flag.into());
        self.0.push(value.into());
    }
}

/// A copy-pasteable rendering of a command, for artifacts and reproducers.
pub fn shell_quote_command(program: &str, args: &[OsString]) -> String {
    std::iter::once(program.to_string())
        .chain(args.iter().map(|a| shell_quote(&a.to_string_lossy())))
        .collect::<Vec<_>>()
        .join(" ")
}

pub use pmem_lab_env::shell_quote;

#[cfg(test)]
mod tests {
    use super::*;

    fn two_dimms() -> MachineSpec {
        MachineSpec {
            cpus: 2,
            nvdimms: vec![
                NvdimmSpec {
                    size: ByteSize(GIB),
                    label_size: NvdimmSpec::DEFAULT_LABEL_SIZE,
                    align: NvdimmSpec::DEFAULT_ALIGN,
                    errors: vec![],
                },
                NvdimmSpec {
                    size: ByteSize(4 * GIB),
                    label_size: ByteSize(256 << 10),
                    align: ByteSize(GIB),
                    errors: vec![],
                },
            ],
            ..MachineSpec::default()
        }
    }

    #[test]
    fn a_restore_waits_for_its_state_and_the_platform_log_goes_on() {
        let spec = two_dimms();
        let mut files = VmFiles::in_dir(
            Path::new("/tmp/pl-x"),
            Path::new("/k/bzImage"),
            Path::new("/k/initrd"),
            &spec,
        );
        let cold: Vec<String> = qemu_args(&spec, Accel::Tcg, &files)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(!cold.iter().any(|a| a == "-incoming"));
        assert!(
            cold.contains(&"file,id=platform,path=/tmp/pl-x/platform.log,append=on".to_string())
        );
        files.incoming = Some(PathBuf::from("/snap/state"));
        let restore: Vec<String> = qemu_args(&spec, Accel::Tcg, &files)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        // The same machine, plus `-incoming defer`: the state comes through
        // migrate-incoming once the capabilities are set.
        assert_eq!(&restore[..cold.len()], &cold[..]);
        assert_eq!(&restore[cold.len()..], ["-incoming", "defer"]);
    }

    fn args_of(spec: &MachineSpec, accel: Accel) -> Vec<String> {
        let files = VmFiles::in_dir(
            Path::new("/tmp/pl-x"),
            Path::new("/k/bzImage"),
            Path::new("/k/initrd"),
            spec,
        );
        qemu_args(spec, accel, &files)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    fn value_after(args: &[String], flag: &str) -> Vec<String> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect()
    }

    #[test]
    fn nvdimms_get_backends_devices_slots_and_room() {
        let args = args_of(&two_dimms(), Accel::Tcg);
        assert_eq!(value_after(&args, "-machine"), ["pc,nvdimm=on,accel=tcg"]);
        assert_eq!(value_after(&args, "-m"), ["2G,slots=2,maxmem=7G"]);
        let objects = value_after(&args, "-object");
        assert_eq!(
            objects,
            [
                "memory-backend-file,id=mem0,share=on,mem-path=/tmp/pl-x/nvdimm0,size=1G,align=2M",
                "memory-backend-file,id=mem1,share=on,mem-path=/tmp/pl-x/nvdimm1,size=4G,align=1G",
            ]
        );
        let devices = value_after(&args, "-device");
        assert!(devices.contains(&"nvdimm,id=nvdimm0,memdev=mem0,label-size=128K".to_string()));
        assert!(devices.contains(&"nvdimm,id=nvdimm1,memdev=mem1,label-size=256K".to_string()));
    }

    #[test]
    fn intel_cpu_and_smp_and_accel() {
        let args = args_of(&two_dimms(), Accel::Kvm);
        assert_eq!(
            value_after(&args, "-cpu"),
            ["max,vendor=GenuineIntel,family=6,model=106"]
        );
        assert_eq!(value_after(&args, "-smp"), ["2"]);
        assert_eq!(value_after(&args, "-machine"), ["pc,nvdimm=on,accel=kvm"]);
    }

    #[test]
    fn no_network_no_reboot_and_control_channels() {
        let args = args_of(&MachineSpec::default(), Accel::Tcg);
        assert!(
            args.contains(&"-nodefaults".to_string()),
            "-nodefaults drops the default NIC"
        );
        assert!(!args.iter().any(|a| a == "-nic" || a == "-netdev"));
        assert!(args.contains(&"-no-reboot".to_string()));
        assert_eq!(value_after(&args, "-m"), ["2G"]);
        assert_eq!(value_after(&args, "-machine"), ["pc,accel=tcg"]);
        let chardevs = value_after(&args, "-chardev");
        assert!(chardevs
            .iter()
            .any(|c| c == "socket,id=qmp,path=/tmp/pl-x/qmp,server=on,wait=off"));
        assert!(chardevs
            .iter()
            .any(|c| c.starts_with("socket,id=agent,path=/tmp/pl-x/agent,")));
        assert!(value_after(&args, "-device")
            .iter()
            .any(|d| d.ends_with(&format!("name={}", pmem_lab_proto::PORT_NAME))));
    }

    #[test]
    fn cmdline_panics_reboot_and_selects_nfit_test() {
        let mut spec = MachineSpec::default();
        assert_eq!(kernel_cmdline(&spec), "console=ttyS0 panic=-1");
        spec.nfit_test = true;
        assert!(kernel_cmdline(&spec).ends_with(" pmem_lab.nfit_test=1"));
    }

    #[test]
    fn region_and_usable_sizes_match_what_the_guest_reports() {
        let dimms = two_dimms().nvdimms;
        // 1G, 128K labels, 2M backend: region 1071644672, available 1056964608.
        assert_eq!(dimms[0].region_size(), 1071644672);
        assert_eq!(dimms[0].usable(), 1056964608);
        // 4G, 1G backend: the label area costs a whole 1G step.
        assert_eq!(dimms[1].region_size(), 3 * GIB);
        assert_eq!(dimms[1].usable(), 3 * GIB);
    }

    #[test]
    fn nvdimms_are_packed_after_each_others_regions() {
        let mut spec = two_dimms();
        // Measured: the second of two 1G/2M NVDIMMs starts 1022M after the first.
        spec.nvdimms[1].align = NvdimmSpec::DEFAULT_ALIGN;
        assert_eq!(spec.region_offsets(), [0, 1022 << 20]);
        // A 1G backend lands on the next 1G boundary.
        assert_eq!(two_dimms().region_offsets(), [0, GIB]);
    }

    #[test]
    fn e820_pmem_goes_on_the_kernel_command_line() {
        let spec = MachineSpec {
            e820_pmem: vec![
                crate::vm::machine::E820Pmem {
                    at: GIB,
                    size: 512 << 20,
                },
                crate::vm::machine::E820Pmem {
                    at: 2 * GIB,
                    size: 256 << 20,
                },
            ],
            ..MachineSpec::default()
        };
        assert_eq!(
            kernel_cmdline(&spec),
            "console=ttyS0 panic=-1 memmap=512M!1G memmap=256M!2G"
        );
    }

    #[test]
    fn cxl_devices_get_a_q35_host_bridge_root_ports_and_a_window() {
        let dev = |size| CxlSpec {
            size: ByteSize(size),
            lsa_size: CxlSpec::DEFAULT_LSA_SIZE,
        };
        let spec = MachineSpec {
            cxl: vec![dev(256 << 20), dev(512 << 20)],
            ..MachineSpec::default()
        };
        let args = args_of(&spec, Accel::Tcg);
        assert_eq!(value_after(&args, "-machine"), ["q35,cxl=on,accel=tcg"]);
        assert_eq!(value_after(&args, "-m"), ["2G"]);
        assert_eq!(
            value_after(&args, "-M"),
            ["cxl-fmw.0.targets.0=cxl.0,cxl-fmw.0.size=768M"]
        );
        assert_eq!(
            value_after(&args, "-object"),
            [
                "memory-backend-file,id=cxl-mem0,share=on,mem-path=/tmp/pl-x/cxl0,size=256M",
                "memory-backend-file,id=cxl-lsa0,share=on,mem-path=/tmp/pl-x/cxl0-lsa,size=128K",
                "memory-backend-file,id=cxl-mem1,share=on,mem-path=/tmp/pl-x/cxl1,size=512M",
                "memory-backend-file,id=cxl-lsa1,share=on,mem-path=/tmp/pl-x/cxl1-lsa,size=128K",
            ]
        );
        let devices = value_after(&args, "-device");
        let cxl: Vec<&String> = devices
            .iter()
            .filter(|d| d.starts_with("pxb-cxl") || d.starts_with("cxl-"))
            .collect();
        assert_eq!(
            cxl,
            [
                "pxb-cxl,bus_nr=12,bus=pcie.0,id=cxl.0",
                "cxl-rp,port=0,bus=cxl.0,id=cxl-rp0,chassis=0,slot=0",
                "cxl-type3,bus=cxl-rp0,persistent-memdev=cxl-mem0,lsa=cxl-lsa0,id=cxl-pmem0,sn=1",
                "cxl-rp,port=1,bus=cxl.0,id=cxl-rp1,chassis=0,slot=1",
                "cxl-type3,bus=cxl-rp1,persistent-memdev=cxl-mem1,lsa=cxl-lsa1,id=cxl-pmem1,sn=2",
            ]
        );
    }

    #[test]
    fn quoting_is_copy_pasteable() {
        let args: Vec<OsString> = vec![
            "-append".into(),
            "console=ttyS0 panic=-1".into(),
            "it's".into(),
        ];
        assert_eq!(
            shell_quote_command(pmem_lab_env::qemu::PROGRAM, &args),
            r"qemu-system-x86_64 -append 'console=ttyS0 panic=-1' 'it'\''s'"
        );
    }
}
