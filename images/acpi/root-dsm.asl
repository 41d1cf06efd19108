/*
 * pmem-lab: the NVDIMM root device's _DSM that QEMU does not implement.
 *
 * Installed next to QEMU's own NVDIMM SSDT (whose root _DSM the lab renames
 * to QDSM in the same boot) through the kernel's ACPI table upgrade. It
 * answers the NFIT root functions of the ACPI spec ("NVDIMM Root Device
 * _DSMs") for the root UUID and hands every other UUID to QEMU's method:
 *
 *   0 query          1 ARS capabilities   2 ARS start     3 ARS status
 *   4 clear uncorrectable error           7 ARS error inject
 *   8 ARS error inject clear              9 ARS error inject status
 *
 * Payload layouts: include/uapi/linux/ndctl.h (nd_cmd_ars_cap,
 * nd_cmd_ars_start, nd_cmd_ars_status, nd_cmd_clear_error) and ndctl's
 * libndctl-nfit.h (nd_cmd_ars_err_inj*); checked against
 * drivers/acpi/nfit/core.c (xlat_bus_status, ars_status_process_records).
 *
 * Integers: QEMU's DSDT is revision 1, so ACPICA runs every table with
 * 32-bit integers. The media-error list therefore keeps addresses in units
 * of 256 bytes (the clear-error unit): unit = SPA >> 8, which covers SPAs
 * below 1 TiB. 64-bit payload fields are split into 32-bit halves.
 *
 * State lives here, in AML: the error list (latent errors baked in by the
 * lab, plus injected ones), whether each was injected, and the last ARS.
 * Capacity: 256 units (64 KiB of poisoned media); an injection past it
 * fails with status 2 (invalid input parameters).
 *
 * Every change of the list is also written to the lab (LLOG below), so
 * that the lab's poison model knows which lines are bad without asking the
 * guest.
 *
 * Rendered per case by the lab (harness/src/boot/acpi/root_dsm.rs), which fills
 * in the at-sign markers below.
 */
DefinitionBlock ("", "SSDT", 1, "PMLAB ", "ROOTDSM", 1)
{
    External (\_SB.NVDR, DeviceObj)
    External (\_SB.NVDR.QDSM, MethodObj)

    Scope (\_SB.NVDR)
    {
        /* Error list: LCNT entries of unit numbers; LINJ[i] = 1 if injected. */
        Name (LMAX, 256)
        Name (LCNT, @@COUNT@@)
        Name (LADR, Package (256) { @@UNITS@@ })
        Name (LINJ, Package (256) { @@INJECTED@@ })

        /* NVDIMM SPA ranges as [first unit, end unit) pairs. */
        Name (LSPA, Package () { @@SPA@@ })

        /*
         * Firmware faults a case asked for (machine.root_dsm_faults):
         * LFTR 1 = the ARS status claims one record less than it returns.
         */
        Name (LFTR, @@FAULT_TRUNCATE@@)

        /* The last ARS: LAST 0 = none since boot, 1 = complete. */
        Name (LAST, 0)
        Name (LASA, Buffer (8) {})
        Name (LASL, Buffer (8) {})
        Name (LATY, 0)
        Name (LAS0, 0)
        Name (LAS1, 0)

        /*
         * The platform's log to the lab: one ASCII line per change of the
         * error list, written byte by byte to an I/O port where QEMU's
         * isa-debugcon device passes it to a file on the host. Units are
         * hex, [first, end):
         *   "+F,E" injected (function 7)   "-F,E" cleared (function 4)
         *   "~F,E" injected errors in the range withdrawn (function 8)
         * Real platforms keep this list in firmware; the lab needs it on
         * the host to know which lines a load must find poisoned.
         */
        OperationRegion (PLOG, SystemIO, @@LOG_PORT@@, 1)
        Field (PLOG, ByteAcc, NoLock, Preserve)
        {
            PLGB,   8
        }

        Method (LLOG, 3, Serialized)
        {
            Local0 = ToBuffer (Concatenate (Concatenate (Concatenate (Arg0, ToHexString (Arg1)), ","), ToHexString (Arg2)))
            Local1 = 0
            While (Local1 < SizeOf (Local0))
            {
                Local2 = DerefOf (Local0 [Local1])
                If (Local2 == 0)
                {
                    Break
                }
                PLGB = Local2
                Local1++
            }
            PLGB = 0x0A
        }

        /* Field helpers: little-endian bytes of a 32-bit value. */
        Method (LB4, 1, NotSerialized)
        {
            Return (Mid (ToBuffer (Arg0), 0, 4))
        }

        Method (LB2, 1, NotSerialized)
        {
            Return (Mid (ToBuffer (Arg0), 0, 2))
        }

        /* An 8-byte field from a unit number (unit << 8). */
        Method (LB8, 1, NotSerialized)
        {
            Return (Concatenate (LB4 ((Arg0 << 8) & 0xFFFFFFFF), LB4 (Arg0 >> 24)))
        }

        /* 32-bit little-endian value at byte Arg1 of buffer Arg0. */
        Method (LRD4, 2, NotSerialized)
        {
            Return (ToInteger (Mid (Arg0, Arg1, 4)) & 0xFFFFFFFF)
        }

        /*
         * The unit holding the 64-bit SPA at byte Arg1 of Arg0, or
         * 0xFFFFFFFF when the SPA is at or above 1 TiB.
         */
        Method (LUNI, 2, NotSerialized)
        {
            Local0 = LRD4 (Arg0, Arg1)
            Local1 = LRD4 (Arg0, Arg1 + 4)
            If (Local1 > 0xFF)
            {
                Return (0xFFFFFFFF)
            }
            Return ((Local0 >> 8) | (Local1 << 24))
        }

        /*
         * The units [LR0, LR1) covered by the (address, length) pair at
         * bytes 0 and 8 of Arg0. Returns 0 when the range is empty, reaches
         * past 1 TiB or is not inside one NVDIMM's SPA range. (_DSM is
         * Serialized, so these two names are never shared by two callers.)
         */
        Name (LR0, 0)
        Name (LR1, 0)
        Method (LRNG, 1, NotSerialized)
        {
            Local0 = LUNI (Arg0, 0)
            Local2 = LRD4 (Arg0, 8)
            Local3 = LRD4 (Arg0, 12)
            If ((Local0 == 0xFFFFFFFF) || (Local3 > 0xFF) || ((Local2 | Local3) == 0))
            {
                Return (0)
            }
            /* end = first + ceil(length / 256), length = Local3:Local2. */
            Local4 = (Local2 >> 8) | (Local3 << 24)
            If (Local2 & 0xFF)
            {
                Local4++
            }
            Local1 = Local0 + Local4
            LR0 = Local0
            LR1 = Local1
            Local5 = 0
            While (Local5 < SizeOf (LSPA))
            {
                If ((Local0 >= DerefOf (LSPA [Local5])) && (Local1 <= DerefOf (LSPA [Local5 + 1])))
                {
                    Return (1)
                }
                Local5 += 2
            }
            Return (0)
        }

        /* Remove the entries in units [Arg0, Arg1); only injected ones if Arg2. */
        Method (LDEL, 3, Serialized)
        {
            Local0 = 0
            While (Local0 < LCNT)
            {
                Local1 = DerefOf (LADR [Local0])
                If ((Local1 >= Arg0) && (Local1 < Arg1) && (!Arg2 || DerefOf (LINJ [Local0])))
                {
                    LCNT--
                    LADR [Local0] = DerefOf (LADR [LCNT])
                    LINJ [Local0] = DerefOf (LINJ [LCNT])
                }
                Else
                {
                    Local0++
                }
            }
        }

        /* Add units [Arg0, Arg1) as injected; 0 on success, 2 when full. */
        Method (LADD, 2, Serialized)
        {
            Local0 = Arg0
            While (Local0 < Arg1)
            {
                Local1 = 0
                Local2 = 0
                While (Local1 < LCNT)
                {
                    If (DerefOf (LADR [Local1]) == Local0)
                    {
                        LINJ [Local1] = 1
                        Local2 = 1
                        Break
                    }
                    Local1++
                }
                If (!Local2)
                {
                    If (LCNT >= LMAX)
                    {
                        /* what was added before the list filled up */
                        If (Local0 > Arg0)
                        {
                            LLOG ("+", Arg0, Local0)
                        }
                        Return (2)
                    }
                    LADR [LCNT] = Local0
                    LINJ [LCNT] = 1
                    LCNT++
                }
                Local0++
            }
            LLOG ("+", Arg0, Arg1)
            Return (0)
        }

        /* ARS capabilities: persistent scrub, record room for the whole list. */
        Method (LCAP, 1, Serialized)
        {
            If (!LRNG (Arg0))
            {
                Return (Concatenate (LB4 (2), Buffer (12) {}))
            }
            /* status: ND_ARS_PERSISTENT in the extended status */
            Local1 = LB4 (0x00020000)
            /* max_ars_out = 48-byte header + 24 bytes per record */
            Concatenate (Local1, LB4 (48 + (24 * LMAX)), Local1)
            /* clear_err_unit */
            Concatenate (Local1, LB4 (256), Local1)
            /* flags, reserved */
            Concatenate (Local1, LB4 (0), Local1)
            Return (Local1)
        }

        /* ARS start: runs to completion at once. */
        Method (LSTA, 1, Serialized)
        {
            Local1 = ToInteger (Mid (Arg0, 16, 2)) & 0xFFFF
            If (!LRNG (Arg0) || !(Local1 & 2))
            {
                Return (Concatenate (LB4 (2), LB4 (0)))
            }
            LASA = Mid (Arg0, 0, 8)
            LASL = Mid (Arg0, 8, 8)
            LATY = Local1
            LAS0 = LR0
            LAS1 = LR1
            LAST = 1
            /* status, estimated scrub time */
            Return (Concatenate (LB4 (0), LB4 (0)))
        }

        /* ARS status: the errors inside the last ARS range. */
        Method (LSTS, 0, Serialized)
        {
            If (!LAST)
            {
                /* NFIT_ARS_STATUS_NONE: no ARS since boot; empty header. */
                Return (Concatenate (Concatenate (LB4 (0x00020000), LB4 (44)), Buffer (40) {}))
            }
            Local1 = Buffer (0) {}
            Local2 = 0
            Local0 = 0
            While (Local0 < LCNT)
            {
                Local3 = DerefOf (LADR [Local0])
                If ((Local3 >= LAS0) && (Local3 < LAS1))
                {
                    /* nd_ars_record: handle, reserved, err_address, length */
                    Concatenate (Local1, Buffer (8) {}, Local1)
                    Concatenate (Local1, LB8 (Local3), Local1)
                    Concatenate (Local1, LB8 (1), Local1)
                    Local2++
                }
                Local0++
            }
            /* status DONE; out_length counts from itself: 44 + 24 n */
            Local5 = 44 + (24 * Local2)
            If (LFTR && Local2)
            {
                Local5 -= 24
            }
            Local4 = Concatenate (LB4 (0), LB4 (Local5))
            Concatenate (Local4, LASA, Local4)
            Concatenate (Local4, LASL, Local4)
            /* restart address and length: nothing to restart */
            Concatenate (Local4, Buffer (16) {}, Local4)
            Concatenate (Local4, LB2 (LATY), Local4)
            Concatenate (Local4, LB2 (0), Local4)
            Concatenate (Local4, LB4 (Local2), Local4)
            Return (Concatenate (Local4, Local1))
        }

        /* Clear uncorrectable error: whole clear units only. */
        Method (LCLR, 1, Serialized)
        {
            If (!LRNG (Arg0) || (LRD4 (Arg0, 0) & 0xFF) || (LRD4 (Arg0, 8) & 0xFF))
            {
                Return (Concatenate (LB4 (2), Buffer (12) {}))
            }
            LDEL (LR0, LR1, 0)
            LLOG ("-", LR0, LR1)
            /* status, reserved, cleared = the whole length */
            Return (Concatenate (Concatenate (LB4 (0), LB4 (0)), Mid (Arg0, 8, 8)))
        }

        /* ARS error inject; option bit 0 asks for a notification. */
        Method (LINS, 1, Serialized)
        {
            If (!LRNG (Arg0))
            {
                Return (LB4 (2))
            }
            Local1 = LADD (LR0, LR1)
            If (!Local1 && (SizeOf (Arg0) > 16))
            {
                If (DerefOf (Arg0 [16]) & 1)
                {
                    /* NFIT_NOTIFY_UC_MEMORY_ERROR: the kernel runs ARS. */
                    Notify (\_SB.NVDR, 0x81)
                }
            }
            Return (LB4 (Local1))
        }

        /* ARS error inject clear: forget injected errors in the range. */
        Method (LUNJ, 1, Serialized)
        {
            If (!LRNG (Arg0))
            {
                Return (LB4 (2))
            }
            LDEL (LR0, LR1, 1)
            LLOG ("~", LR0, LR1)
            Return (LB4 (0))
        }

        /* ARS error inject status: the injected ranges. */
        Method (LIST, 0, Serialized)
        {
            Local1 = Buffer (0) {}
            Local2 = 0
            Local0 = 0
            While (Local0 < LCNT)
            {
                If (DerefOf (LINJ [Local0]))
                {
                    Concatenate (Local1, LB8 (DerefOf (LADR [Local0])), Local1)
                    Concatenate (Local1, LB8 (1), Local1)
                    Local2++
                }
                Local0++
            }
            Return (Concatenate (Concatenate (LB4 (0), LB4 (Local2)), Local1))
        }

        Method (_DSM, 4, Serialized)  // _DSM: Device-Specific Method
        {
            If (Arg0 != ToUUID ("2f10e7a4-9e91-11e4-89d3-123b93f75cba"))
            {
                Return (QDSM (Arg0, Arg1, Arg2, Arg3))
            }
            If (Arg2 == 0)
            {
                /* functions 0-4 and 7-9 */
                Return (Buffer (2) { 0x9F, 0x03 })
            }
            Local0 = Buffer (0) {}
            If ((ObjectType (Arg3) == 4) && (SizeOf (Arg3) >= 1))
            {
                Local0 = DerefOf (Arg3 [0])
            }
            Local1 = SizeOf (Local0)
            Switch (ToInteger (Arg2))
            {
                Case (1)
                {
                    If (Local1 >= 16)
                    {
                        Return (LCAP (Local0))
                    }
                }
                Case (2)
                {
                    If (Local1 >= 18)
                    {
                        Return (LSTA (Local0))
                    }
                }
                Case (3)
                {
                    Return (LSTS ())
                }
                Case (4)
                {
                    If (Local1 >= 16)
                    {
                        Return (LCLR (Local0))
                    }
                }
                Case (7)
                {
                    If (Local1 >= 16)
                    {
                        Return (LINS (Local0))
                    }
                }
                Case (8)
                {
                    If (Local1 >= 16)
                    {
                        Return (LUNJ (Local0))
                    }
                }
                Case (9)
                {
                    Return (LIST ())
                }
                Default
                {
                    /* status 1: function not supported */
                    Return (LB4 (1))
                }
            }
            /* an input too short for the function: invalid parameters */
            Return (LB4 (2))
        }
    }
}
