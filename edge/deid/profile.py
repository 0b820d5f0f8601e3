"""DICOM PS3.15 Annex E, Table E.1-1: the Basic Application Level Confidentiality Profile.

One row per attribute: tag, keyword, the basic profile's action, and where an option changes
it, `option=action`. Actions: D dummy value, Z empty, X remove, K keep, C clean, U new UID;
compound ones (X/Z, Z/D, X/Z/D, X/D, X/Z/U*) are resolved by `resolve` below.

The rows are the attributes of the standard table that occur in whole-slide, SEG and SR
instances, GPS, and the common patient, study, visit, equipment and request attributes (RT
and other modality-specific rows are left out: such attributes fall under the generic rules
in edge.deid.transform). Rows marked `edge` are not in Table E.1-1 and are ours, stricter.

Option keys: dates (Retain Longitudinal Temporal Information Modified Dates), device (Retain
Device Identity), uids (Retain UIDs), desc (Clean Descriptors), struct (Clean Structured
Content), chars (Retain Patient Characteristics), inst (Retain Institution Identity).
"""

from __future__ import annotations

from dataclasses import dataclass

_TABLE = """
00080014 InstanceCreatorUID U uids=K
00080015 InstanceCoercionDateTime X dates=C
00080018 SOPInstanceUID U uids=K
00080020 StudyDate Z dates=C
00080021 SeriesDate X/D dates=C
00080022 AcquisitionDate X/Z dates=C
00080023 ContentDate Z/D dates=C
00080024 OverlayDate X dates=C
00080025 CurveDate X dates=C
0008002A AcquisitionDateTime X/Z/D dates=C
00080030 StudyTime Z dates=C
00080031 SeriesTime X/D dates=C
00080032 AcquisitionTime X/Z dates=C
00080033 ContentTime Z/D dates=C
00080034 OverlayTime X dates=C
00080035 CurveTime X dates=C
00080050 AccessionNumber Z
00080051 IssuerOfAccessionNumberSequence X edge
00080058 FailedSOPInstanceUIDList U uids=K
00080080 InstitutionName X/Z/D inst=K
00080081 InstitutionAddress X inst=K
00080082 InstitutionCodeSequence X/Z/D inst=K
00080090 ReferringPhysicianName Z
00080092 ReferringPhysicianAddress X
00080094 ReferringPhysicianTelephoneNumbers X
00080096 ReferringPhysicianIdentificationSequence X
0008009C ConsultingPhysicianName Z
0008009D ConsultingPhysicianIdentificationSequence X
00080201 TimezoneOffsetFromUTC X dates=C
00081010 StationName X/Z/D device=K
00081030 StudyDescription X desc=C
0008103E SeriesDescription X desc=C
00081040 InstitutionalDepartmentName X inst=K
00081041 InstitutionalDepartmentTypeCodeSequence X inst=K
00081048 PhysiciansOfRecord X
00081049 PhysiciansOfRecordIdentificationSequence X
00081050 PerformingPhysicianName X
00081052 PerformingPhysicianIdentificationSequence X
00081060 NameOfPhysiciansReadingStudy X
00081062 PhysiciansReadingStudyIdentificationSequence X
00081070 OperatorsName X/Z/D
00081072 OperatorIdentificationSequence X/D
00081080 AdmittingDiagnosesDescription X desc=C
00081084 AdmittingDiagnosesCodeSequence X desc=C
00081110 ReferencedStudySequence X/Z uids=K
00081111 ReferencedPerformedProcedureStepSequence X/Z/D uids=K
00081120 ReferencedPatientSequence X
00081140 ReferencedImageSequence X/Z/U* uids=K
00081155 ReferencedSOPInstanceUID U uids=K
00081195 TransactionUID U uids=K
00082111 DerivationDescription X desc=C
00082112 SourceImageSequence X/Z/U* uids=K
00083010 IrradiationEventUID U uids=K
00084000 IdentifyingComments X desc=C
00100010 PatientName Z
00100020 PatientID Z
00100021 IssuerOfPatientID X
00100030 PatientBirthDate Z
00100032 PatientBirthTime X
00100040 PatientSex Z chars=K
00100050 PatientInsurancePlanCodeSequence X
00100101 PatientPrimaryLanguageCodeSequence X
00100102 PatientPrimaryLanguageModifierCodeSequence X
00101000 OtherPatientIDs X
00101001 OtherPatientNames X
00101002 OtherPatientIDsSequence X
00101005 PatientBirthName X
00101010 PatientAge X chars=K
00101020 PatientSize X chars=K
00101030 PatientWeight X chars=K
00101040 PatientAddress X
00101050 InsurancePlanIdentification X
00101060 PatientMotherBirthName X
00101080 MilitaryRank X
00101081 BranchOfService X
00101090 MedicalRecordLocator X
00101100 ReferencedPatientPhotoSequence X
00102000 MedicalAlerts X desc=C
00102110 Allergies X chars=C desc=C
00102150 CountryOfResidence X
00102152 RegionOfResidence X
00102154 PatientTelephoneNumbers X
00102155 PatientTelecomInformation X
00102160 EthnicGroup X chars=K
00102180 Occupation X desc=C
001021A0 SmokingStatus X chars=K
001021B0 AdditionalPatientHistory X desc=C
001021C0 PregnancyStatus X chars=K
001021D0 LastMenstrualDate X dates=C
001021F0 PatientReligiousPreference X
00102203 PatientSexNeutered X/Z chars=K
00102297 ResponsiblePerson X
00102299 ResponsibleOrganization X
00104000 PatientComments X desc=C
00120010 ClinicalTrialSponsorName D
00120020 ClinicalTrialProtocolID D
00120021 ClinicalTrialProtocolName Z
00120030 ClinicalTrialSiteID Z inst=K
00120031 ClinicalTrialSiteName Z inst=K
00120040 ClinicalTrialSubjectID D
00120042 ClinicalTrialSubjectReadingID D
00120050 ClinicalTrialTimePointID Z
00120051 ClinicalTrialTimePointDescription X desc=C
00120060 ClinicalTrialCoordinatingCenterName Z inst=K
00120071 ClinicalTrialSeriesID X
00120072 ClinicalTrialSeriesDescription X desc=C
00120081 ClinicalTrialProtocolEthicsCommitteeName D inst=K
00120082 ClinicalTrialProtocolEthicsCommitteeApprovalNumber X
0016002B MakerNote X desc=C
0016004B DeviceSettingDescription X desc=C
0016004D CameraOwnerName X
0016004E LensSpecification X device=K
0016004F LensMake X device=K
00160050 LensModel X device=K
00160051 LensSerialNumber X device=K
00160070 GPSVersionID X
00160071 GPSLatitudeRef X
00160072 GPSLatitude X
00160073 GPSLongitudeRef X
00160074 GPSLongitude X
00160075 GPSAltitudeRef X
00160076 GPSAltitude X
00160077 GPSTimeStamp X
00160078 GPSSatellites X
00160079 GPSStatus X
0016007A GPSMeasureMode X
0016007B GPSDOP X
0016007C GPSSpeedRef X
0016007D GPSSpeed X
0016007E GPSTrackRef X
0016007F GPSTrack X
00160080 GPSImgDirectionRef X
00160081 GPSImgDirection X
00160082 GPSMapDatum X
00160083 GPSDestLatitudeRef X
00160084 GPSDestLatitude X
00160085 GPSDestLongitudeRef X
00160086 GPSDestLongitude X
00160087 GPSDestBearingRef X
00160088 GPSDestBearing X
00160089 GPSDestDistanceRef X
0016008A GPSDestDistance X
0016008B GPSProcessingMethod X
0016008C GPSAreaInformation X
0016008D GPSDateStamp X dates=C
0016008E GPSDifferential X
00180010 ContrastBolusAgent Z/D desc=C
00181000 DeviceSerialNumber X/Z/D device=K
00181002 DeviceUID U uids=K device=K
00181004 PlateID X device=K
00181005 GeneratorID X device=K
00181007 CassetteID X device=K
00181008 GantryID X device=K
00181009 UniqueDeviceIdentifier X device=K
0018100A UDISequence X device=K
0018100B ManufacturerDeviceClassUID U uids=K device=K
00181030 ProtocolName X/D desc=C
00181400 AcquisitionDeviceProcessingDescription X/D desc=C
00184000 AcquisitionComments X desc=C
001811BB AcquisitionFieldOfViewLabel D desc=C
0018700A DetectorID X/D device=K
00189424 AcquisitionProtocolDescription X desc=C
00189516 StartAcquisitionDateTime X/D dates=C
00189517 EndAcquisitionDateTime X/D dates=C
00189937 RequestedSeriesDescription X desc=C
0018A003 ContributionDescription X desc=C
0020000D StudyInstanceUID U uids=K
0020000E SeriesInstanceUID U uids=K
00200010 StudyID Z
00200052 FrameOfReferenceUID U uids=K
00200200 SynchronizationFrameOfReferenceUID U uids=K
00203401 ModifyingDeviceID X
00203406 ModifiedImageDescription X
00204000 ImageComments X desc=C
00209158 FrameComments X desc=C
00209161 ConcatenationUID U uids=K
00209164 DimensionOrganizationUID U uids=K
00281199 PaletteColorLookupTableUID U uids=K
00281214 LargePaletteColorLookupTableUID U uids=K
00284000 ImagePresentationComments X
00320012 StudyIDIssuer X
00321020 ScheduledStudyLocation X device=K
00321021 ScheduledStudyLocationAETitle X device=K
00321030 ReasonForStudy X desc=C
00321032 RequestingPhysician X
00321033 RequestingService X
00321060 RequestedProcedureDescription X/Z desc=C
00321066 ReasonForVisit X desc=C
00321067 ReasonForVisitCodeSequence X desc=C
00321070 RequestedContrastAgent X desc=C
00324000 StudyComments X desc=C
00380004 ReferencedPatientAliasSequence X
00380010 AdmissionID X
00380011 IssuerOfAdmissionID X
00380014 IssuerOfAdmissionIDSequence X
0038001E ScheduledPatientInstitutionResidence X
00380020 AdmittingDate X dates=C
00380021 AdmittingTime X dates=C
00380040 DischargeDiagnosisDescription X desc=C
00380050 SpecialNeeds X chars=C
00380060 ServiceEpisodeID X
00380061 IssuerOfServiceEpisodeID X
00380062 ServiceEpisodeDescription X desc=C
00380064 IssuerOfServiceEpisodeIDSequence X
00380300 CurrentPatientLocation X
00380400 PatientInstitutionResidence X
00380500 PatientState X chars=C desc=C
00384000 VisitComments X desc=C
00400001 ScheduledStationAETitle X device=K
00400002 ScheduledProcedureStepStartDate X dates=C
00400003 ScheduledProcedureStepStartTime X dates=C
00400004 ScheduledProcedureStepEndDate X dates=C
00400005 ScheduledProcedureStepEndTime X dates=C
00400006 ScheduledPerformingPhysicianName X
00400007 ScheduledProcedureStepDescription X desc=C
00400009 ScheduledProcedureStepID X
0040000B ScheduledPerformingPhysicianIdentificationSequence X
00400010 ScheduledStationName X device=K
00400011 ScheduledProcedureStepLocation X device=K
00400012 PreMedication X chars=C
00400241 PerformedStationAETitle X device=K
00400242 PerformedStationName X device=K
00400243 PerformedLocation X
00400244 PerformedProcedureStepStartDate X dates=C
00400245 PerformedProcedureStepStartTime X dates=C
00400250 PerformedProcedureStepEndDate X dates=C
00400251 PerformedProcedureStepEndTime X dates=C
00400253 PerformedProcedureStepID X
00400254 PerformedProcedureStepDescription X desc=C
00400275 RequestAttributesSequence X desc=C
00400280 CommentsOnThePerformedProcedureStep X desc=C
00400310 CommentsOnRadiationDose X desc=C
0040050A SpecimenAccessionNumber X
00400512 ContainerIdentifier D
00400513 IssuerOfTheContainerIdentifierSequence Z
0040051A ContainerDescription X desc=C
00400551 SpecimenIdentifier D
00400554 SpecimenUID U uids=K
00400555 AcquisitionContextSequence X/Z struct=C
00400562 IssuerOfTheSpecimenIdentifierSequence Z
00400600 SpecimenShortDescription X desc=C
00400602 SpecimenDetailedDescription X desc=C
00400610 SpecimenPreparationSequence Z struct=C
004006FA SlideIdentifier X
00401001 RequestedProcedureID X
00401002 ReasonForTheRequestedProcedure X desc=C
00401004 PatientTransportArrangements X
00401005 RequestedProcedureLocation X
0040100A ReasonForRequestedProcedureCodeSequence X desc=C
00401010 NamesOfIntendedRecipientsOfResults X
00401011 IntendedRecipientsOfResultsIdentificationSequence X
00401101 PersonIdentificationCodeSequence D
00401102 PersonAddress X
00401103 PersonTelephoneNumbers X
00401104 PersonTelecomInformation X
00401400 RequestedProcedureComments X desc=C
00402001 ReasonForTheImagingServiceRequest X desc=C
00402008 OrderEnteredBy X
00402009 OrderEntererLocation X
00402010 OrderCallbackPhoneNumber X
00402011 OrderCallbackTelecomInformation X
00402016 PlacerOrderNumberImagingServiceRequest Z
00402017 FillerOrderNumberImagingServiceRequest Z
00402400 ImagingServiceRequestComments X desc=C
00403001 ConfidentialityConstraintOnPatientDataDescription X
00404025 ScheduledStationNameCodeSequence X device=K
00404027 ScheduledStationGeographicLocationCodeSequence X device=K
00404028 PerformedStationNameCodeSequence X device=K
00404030 PerformedStationGeographicLocationCodeSequence X device=K
00404034 ScheduledHumanPerformersSequence X
00404035 ActualHumanPerformersSequence X
00404036 HumanPerformerOrganization X
00404037 HumanPerformerName X
00404050 PerformedProcedureStepStartDateTime X dates=C
00404051 PerformedProcedureStepEndDateTime X dates=C
00404052 ProcedureStepCancellationDateTime X dates=C
0040A027 VerifyingOrganization D
0040A073 VerifyingObserverSequence D
0040A075 VerifyingObserverName D
0040A078 AuthorObserverSequence X
0040A07A ParticipantSequence X
0040A07C CustodialOrganizationSequence X
0040A088 VerifyingObserverIdentificationCodeSequence Z
0040A123 PersonName D
0040A120 DateTime D dates=C edge
0040A121 Date D dates=C edge
0040A122 Time D dates=C edge
0040A124 UID U
0040A160 TextValue D struct=C edge
0040A171 ObservationUID U uids=K
0040A172 ReferencedObservationUIDTrial U uids=K
0040A730 ContentSequence D struct=C
0040DB0C TemplateExtensionOrganizationUID U uids=K
0040DB0D TemplateExtensionCreatorUID U uids=K
0050001B ContainerComponentID X
00500020 DeviceDescription X device=K
00500021 LongDeviceDescription X desc=C
00620021 TrackingUID U uids=K
00700001 GraphicAnnotationSequence D
00700084 ContentCreatorName Z/D
00700086 ContentCreatorIdentificationCodeSequence X
0070031A FiducialUID U uids=K
00701101 PresentationDisplayCollectionUID U uids=K
00701102 PresentationSequenceCollectionUID U uids=K
00880140 StorageMediaFileSetUID U uids=K
00880200 IconImageSequence X
00880904 TopicTitle X
00880906 TopicSubject X
00880910 TopicAuthor X
00880912 TopicKeywords X
04000100 DigitalSignatureUID U
04000402 ReferencedDigitalSignatureSequence X
04000403 ReferencedSOPInstanceMACSequence X
04000404 MAC X
04000550 ModifiedAttributesSequence X
04000551 NonconformingModifiedAttributesSequence X
04000552 NonconformingDataElementValue X
04000561 OriginalAttributesSequence X
04000600 InstanceOriginStatus X
20300020 TextString X
22000002 LabelText X/Z desc=C
22000005 BarcodeValue X/Z
40000010 Arbitrary X
40004000 TextComments X
4008010A InterpretationTranscriber X
4008010B InterpretationText X desc=C
4008010C InterpretationAuthor X
40080111 InterpretationApproverSequence X
40080114 PhysicianApprovingInterpretation X
40080115 InterpretationDiagnosisDescription X desc=C
40080118 ResultsDistributionListSequence X
40084000 ResultsComments X desc=C
FFFAFFFA DigitalSignaturesSequence X
FFFCFFFC DataSetTrailingPadding X
"""

# Attributes that are Type 1 in the IODs the appliance writes (VL Whole Slide Microscopy,
# Segmentation, SR): a compound action that allows D gives them a dummy value, not nothing.
TYPE1 = frozenset({0x00080023, 0x00080033, 0x0008002A, 0x00181000, 0x00400512, 0x00400551})

OPTION_KEYS = ("dates", "device", "uids", "desc", "struct", "chars", "inst")


@dataclass(frozen=True)
class Row:
    tag: int
    keyword: str
    basic: str  # the basic profile's action, possibly compound ("X/Z/D")
    options: tuple[tuple[str, str], ...]  # (option key, action) pairs
    standard: bool  # False for rows of our own (stricter than Table E.1-1)


def _parse(text: str) -> dict[int, Row]:
    rows: dict[int, Row] = {}
    for line in text.strip().splitlines():
        tag, keyword, basic, *rest = line.split()
        standard = "edge" not in rest
        options = tuple(
            (key, action) for key, action in (part.split("=") for part in rest if "=" in part)
        )
        assert all(key in OPTION_KEYS for key, _ in options), line
        rows[int(tag, 16)] = Row(int(tag, 16), keyword, basic, options, standard)
    return rows


ROWS: dict[int, Row] = _parse(_TABLE)


def action(tag: int, options: frozenset[str]) -> str | None:
    """The action (possibly compound) for `tag` under the option keys in force, or None when
    the table has no row for it. An option's action replaces the basic one."""
    row = ROWS.get(tag)
    if row is None:
        return None
    chosen = row.basic
    for key, override in row.options:
        if key in options:
            chosen = override
    return chosen


def resolve(compound: str, tag: int, present: bool) -> str:
    """One action from a compound one, as PS3.15 E.1 allows: the least removal that keeps the
    IOD valid. Z keeps a Type 2 attribute present (empty); D where the attribute is Type 1
    in our IODs; X otherwise. `X/Z/U*` keeps a sequence and replaces the UIDs inside it."""
    parts = compound.split("/")
    if len(parts) == 1:
        return compound
    if "U*" in parts:
        return "U*"
    if "D" in parts and tag in TYPE1 and present:
        return "D"
    if "Z" in parts:
        return "Z"
    return "X"
